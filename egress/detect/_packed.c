/* The search of egress/detect/packed.py in C: pool names packed as 7-bit characters (most or least significant
 * bit first) and letter runs as 6- and 5-bit differences, at every bit offset of a buffer. Same answers as
 * packed.py's pure `_search_pure` for every input (tests/detect/test_packed_fast.py compares them).
 *
 * configure(words, runs6, runs5) keeps the patterns packed.py computes from its vocabulary: the 7-bit words
 * (those its 5-gram search can find) and the 6- and 5-bit difference patterns of the letter runs. search(data)
 * answers three bit masks: the words found (bit i for words[i]), the 6-bit patterns and the 5-bit ones.
 *
 * 7-bit: every bit position of the data (and 32 zero bytes after it, the zero bits packed.py's unpacking reads
 * past the end) is read as the first character of a name: the two bytes after the position's byte (which a name's
 * second to fourth characters fill) are looked up in a table of the bit shifts some name would start at, and only
 * those positions compared whole, character by character. A character
 * read in the zero bytes is 0, which no name holds, as packed.py's separators and the end of its stream are not.
 *
 * 5- and 6-bit: the characters of each offset are unpacked as packed.py's `unpack` does (blocks of 8 characters,
 * the last read in the zero bytes), joined with 0x80 between offsets, and their differences taken as its
 * `differences` does (the later plus `2 ** width` less the earlier, masked). Each block of 8 characters is read
 * from one 64-bit load; each character, with the two before it, indexes a bit table of the three characters whose
 * two differences open some pattern, and only there are the patterns compared whole (since scan22: before, the
 * characters were stored and each position's two differences computed and looked up, twice the instructions).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef PACKED_SOURCE
#define PACKED_SOURCE "" /* setup.py defines it: the SHA-256 of this file */
#endif
#define PACKED_ABI 1

#define MAX_WORDS 64
#define MAX_WORD 40
#define MAX_RUNS 32
#define MAX_RUN 40
#define PAD 40 /* zero bytes after the data: the longest name (40 characters of 7 bits) and a 64-bit load */

typedef struct {
    int count;
    uint8_t len[MAX_WORDS];
    uint8_t chars[2][MAX_WORDS][MAX_WORD]; /* [0] as written; [1] each character's 7 bits reversed (GSM) */
    uint8_t open[2][1 << 16]; /* the bit shifts s (a bit mask) at which some name starting at bit s of a byte
                               * fills the next two bytes with these 16 bits (its 2nd to 4th characters) */
} Words;

typedef struct {
    int count;
    uint8_t len[MAX_RUNS];
    uint8_t steps[MAX_RUNS][MAX_RUN];
    uint32_t open[1 << 12]; /* the patterns (bits) opening with these two differences */
} Runs;

static Words words;
static Runs runs[2]; /* [0] 6-bit, [1] 5-bit */
static uint64_t triples6[(1u << 18) / 64], triples5[(1u << 15) / 64]; /* find_runs: three characters opening a pattern */
static int configured = 0;
static uint8_t bitrev[256];

static inline uint64_t load64(const uint8_t *p) { /* 8 bytes, big-endian */
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* The `width` bits from bit `bit` (0: the first byte's top bit), most significant first. */
static inline unsigned bits_at(const uint8_t *buf, size_t bit, int width) {
    const uint8_t *p = buf + (bit >> 3);
    unsigned v = ((unsigned)p[0] << 8) | p[1];
    return (v >> (16 - width - (bit & 7))) & ((1u << width) - 1);
}

static unsigned rev7(unsigned c) {
    unsigned r = 0;
    for (int i = 0; i < 7; i++) r |= ((c >> i) & 1u) << (6 - i);
    return r;
}

/* Bit mask of the words found at any bit position of `buf` (`nbits` positions, PAD zero bytes after them), in
 * the order `order` (0: as written, 1: GSM's, the buffer's bits reversed byte by byte). */
static uint64_t find_words(const uint8_t *buf, size_t nbits, int order, uint64_t already) {
    uint64_t found = already;
    const uint8_t *open = words.open[order];
    for (size_t byte = 0; byte * 8 < nbits; byte++) {
        unsigned shifts = open[((unsigned)buf[byte + 1] << 8) | buf[byte + 2]];
        while (shifts) {
            int shift = __builtin_ctz(shifts);
            shifts &= shifts - 1;
            size_t pos = byte * 8 + (size_t)shift;
            for (int w = 0; w < words.count; w++) {
                if (found & (1ull << w)) continue;
                const uint8_t *chars = words.chars[order][w];
                int k = 0;
                while (k < words.len[w] && bits_at(buf, pos + 7 * (size_t)k, 7) == chars[k]) k++;
                if (k == words.len[w]) found |= 1ull << w;
            }
        }
    }
    return found;
}

/* Character `g` of the characters packed.py's `differences` reads for one width: each offset's characters one
 * after another (`starts[o]`: where offset o's begin; a separator 0x80 first for every offset but the first).
 * Character m of offset o is the `width` bits at bit o + width * m (blocks of 8 characters from bytes j * width);
 * a separator is read as 0: every difference is masked, and (x - 0x80) & mask == x & mask for width <= 7. */
static unsigned char_at(const uint8_t *padded, const size_t *starts, int width, size_t g) {
    int o = 0;
    while (g >= starts[o + 1])
        o++;
    size_t m = g - starts[o];
    if (o) {
        if (m == 0)
            return 0;
        m--;
    }
    return bits_at(padded, (size_t)o + (size_t)width * m, width);
}

/* The patterns opening with the differences of the three characters `triple` (width bits each, the earliest
 * first) that start at character `i`, compared whole (each difference the later less the earlier, masked). */
static void compare_at(const uint8_t *padded, const size_t *starts, int width, const Runs *table, size_t i,
                       unsigned triple, uint32_t *found) {
    const unsigned mask = (1u << width) - 1;
    unsigned c0 = triple >> (2 * width), c1 = (triple >> width) & mask, c2 = triple & mask;
    uint32_t candidates = table->open[(((c1 - c0) & mask) << width) | ((c2 - c1) & mask)] & ~*found;
    while (candidates) {
        int r = __builtin_ctz(candidates);
        candidates &= candidates - 1;
        size_t len = table->len[r];
        if (i + len + 1 > starts[width])
            continue;
        size_t k = 0;
        unsigned before = char_at(padded, starts, width, i);
        while (k < len) {
            unsigned after = char_at(padded, starts, width, i + k + 1);
            if (((after - before) & mask) != table->steps[r][k])
                break;
            before = after;
            k++;
        }
        if (k == len)
            *found |= 1u << r;
    }
}

/* Bit mask of the `width`-bit difference patterns found in the characters of every offset of `padded` (`size`
 * bytes of data), joined as packed.py joins them. One pass over the characters, unpacked from one 64-bit load per
 * block of 8: the last three characters (a separator read as 0) index `triples`, a bit for each three whose two
 * differences open a pattern (about 1 in 400 for 6 bits, 1 in 110 for 5), and only there are the patterns
 * compared (`compare_at`). The characters are not kept: a comparison reads them again from the data. */
static inline __attribute__((always_inline)) int find_runs(const uint8_t *padded, size_t size, const int width,
                                                          const Runs *table, const uint64_t *triples,
                                                          uint32_t *out) {
    size_t starts[8];
    size_t total = 0;
    for (int offset = 0; offset < width; offset++) {
        starts[offset] = total;
        size_t blocks = (8 * size - (size_t)offset + 8 * (size_t)width - 1) / (8 * (size_t)width);
        total += 8 * blocks + (offset ? 1 : 0);
    }
    starts[width] = total;
    const uint64_t mask2 = ((uint64_t)1 << (2 * width)) - 1, mask3 = ((uint64_t)1 << (3 * width)) - 1;
    uint32_t found = 0;
    uint64_t tail = 0; /* the last two characters */
    for (int offset = 0; offset < width; offset++) {
        size_t first = starts[offset];
        if (offset) {
            uint64_t triple = tail << width; /* the separator, read as 0 */
            if (triples[triple >> 6] >> (triple & 63) & 1)
                compare_at(padded, starts, width, table, first - 2, (unsigned)triple, &found);
            tail = triple & mask2;
            first++;
        }
        size_t blocks = (starts[offset + 1] - first) / 8;
        for (size_t j = 0; j < blocks; j++) { /* block j: `width` bytes from byte j * width, 8 characters */
            uint64_t x = load64(padded + j * (size_t)width) << offset;
            uint64_t window = (tail << (8 * width)) | (x >> (64 - 8 * width)); /* 10 characters, the last lowest */
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) { /* the three characters ending at the block's character k */
                uint64_t triple = (window >> (width * (7 - k))) & mask3;
                if (triples[triple >> 6] >> (triple & 63) & 1) {
                    size_t end = first + 8 * j + (size_t)k; /* the third character's place */
                    if (end >= 2)
                        compare_at(padded, starts, width, table, end - 2, (unsigned)triple, &found);
                }
            }
            tail = window & mask2;
        }
    }
    *out = found;
    return 0;
}

/* find_runs with its width a constant (the characters' shifts and masks compiled in) */
static int find_runs6(const uint8_t *padded, size_t size, uint32_t *out) {
    return find_runs(padded, size, 6, &runs[0], triples6, out);
}
static int find_runs5(const uint8_t *padded, size_t size, uint32_t *out) {
    return find_runs(padded, size, 5, &runs[1], triples5, out);
}

/* `triples` for `table`: for each pair of differences that opens a pattern, every first character. */
static void mark_triples(const Runs *table, int width, uint64_t *triples, size_t words) {
    const unsigned mask = (1u << width) - 1;
    memset(triples, 0, words * sizeof *triples);
    for (unsigned pair = 0; pair < (1u << (2 * width)); pair++) {
        if (!table->open[pair])
            continue;
        for (unsigned c0 = 0; c0 <= mask; c0++) {
            unsigned c1 = (c0 + (pair >> width)) & mask, c2 = (c1 + (pair & mask)) & mask;
            unsigned triple = (c0 << (2 * width)) | (c1 << width) | c2;
            triples[triple >> 6] |= (uint64_t)1 << (triple & 63);
        }
    }
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *seqs[3];
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyTuple_Type, &seqs[0], &PyTuple_Type, &seqs[1], &PyTuple_Type, &seqs[2]))
        return NULL;
    static Words w;
    static Runs r[2];
    memset(&w, 0, sizeof w);
    memset(r, 0, sizeof r);
    if (PyTuple_GET_SIZE(seqs[0]) > MAX_WORDS || PyTuple_GET_SIZE(seqs[1]) > MAX_RUNS ||
        PyTuple_GET_SIZE(seqs[2]) > MAX_RUNS) {
        PyErr_SetString(PyExc_ValueError, "too many patterns");
        return NULL;
    }
    w.count = (int)PyTuple_GET_SIZE(seqs[0]);
    for (int i = 0; i < w.count; i++) {
        PyObject *item = PyTuple_GET_ITEM(seqs[0], i);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) < 2 || PyBytes_GET_SIZE(item) > MAX_WORD) {
            PyErr_SetString(PyExc_ValueError, "a word is bytes of 2 to 40 characters");
            return NULL;
        }
        const uint8_t *s = (const uint8_t *)PyBytes_AS_STRING(item);
        w.len[i] = (uint8_t)PyBytes_GET_SIZE(item);
        for (int k = 0; k < w.len[i]; k++) {
            if (s[k] == 0 || s[k] > 0x7F) {
                PyErr_SetString(PyExc_ValueError, "a word's characters are 1 to 127");
                return NULL;
            }
            w.chars[0][i][k] = s[k];
            w.chars[1][i][k] = (uint8_t)rev7(s[k]);
        }
        if (w.len[i] < 4) {
            PyErr_SetString(PyExc_ValueError, "a word is bytes of 4 to 40 characters");
            return NULL;
        }
        for (int order = 0; order < 2; order++) {
            const uint8_t *c = w.chars[order][i];
            uint32_t opening = ((uint32_t)c[0] << 21) | ((uint32_t)c[1] << 14) | ((uint32_t)c[2] << 7) | c[3];
            for (int shift = 0; shift < 8; shift++) /* bits 8 - shift to 24 - shift of the 28 */
                w.open[order][(opening >> (4 + shift)) & 0xFFFFu] |= (uint8_t)(1u << shift);
        }
    }
    for (int t = 0; t < 2; t++) {
        int width = t ? 5 : 6;
        PyObject *seq = seqs[1 + t];
        r[t].count = (int)PyTuple_GET_SIZE(seq);
        for (int i = 0; i < r[t].count; i++) {
            PyObject *item = PyTuple_GET_ITEM(seq, i);
            if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) < 2 || PyBytes_GET_SIZE(item) > MAX_RUN) {
                PyErr_SetString(PyExc_ValueError, "a pattern is bytes of 2 to 40 differences");
                return NULL;
            }
            const uint8_t *s = (const uint8_t *)PyBytes_AS_STRING(item);
            r[t].len[i] = (uint8_t)PyBytes_GET_SIZE(item);
            for (int k = 0; k < r[t].len[i]; k++) {
                if (s[k] >> width) {
                    PyErr_SetString(PyExc_ValueError, "a difference is under 2 ** width");
                    return NULL;
                }
                r[t].steps[i][k] = s[k];
            }
            r[t].open[(s[0] << width) | s[1]] |= 1u << i;
        }
    }
    words = w;
    runs[0] = r[0];
    runs[1] = r[1];
    mark_triples(&runs[0], 6, triples6, sizeof triples6 / sizeof *triples6);
    mark_triples(&runs[1], 5, triples5, sizeof triples5 / sizeof *triples5);
    configured = 1;
    Py_RETURN_NONE;
}

static PyObject *search(PyObject *self, PyObject *arg) {
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    size_t size = (size_t)view.len;
    if (size > ((size_t)1 << 40)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "too large");
        return NULL;
    }
    uint8_t *padded = PyMem_Calloc(2 * (size + PAD), 1);
    if (padded == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint8_t *flipped = padded + size + PAD;
    memcpy(padded, view.buf, size);
    PyBuffer_Release(&view);
    for (size_t i = 0; i < size; i++) flipped[i] = bitrev[padded[i]];
    uint64_t found7 = 0;
    uint32_t found6 = 0, found5 = 0;
    Py_BEGIN_ALLOW_THREADS
    found7 = find_words(padded, 8 * size, 0, 0);
    found7 = find_words(flipped, 8 * size, 1, found7);
    Py_END_ALLOW_THREADS
    if (size && (find_runs6(padded, size, &found6) < 0 || find_runs5(padded, size, &found5) < 0)) {
        PyMem_Free(padded);
        return PyErr_NoMemory();
    }
    PyMem_Free(padded);
    return Py_BuildValue("(KII)", (unsigned long long)found7, (unsigned)found6, (unsigned)found5);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(words, runs6, runs5): the 7-bit words and the 6- and 5-bit difference patterns searched."},
    {"search", search, METH_O,
     "search(data) -> (words, runs6, runs5): bit masks of the patterns found at any bit offset of data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_packed",
                                    "packed.py's search at every bit offset, in C.", -1, methods};

PyMODINIT_FUNC PyInit__packed(void) {
    for (unsigned b = 0; b < 256; b++) {
        unsigned r = 0;
        for (int i = 0; i < 8; i++) r |= ((b >> i) & 1u) << (7 - i);
        bitrev[b] = (uint8_t)r;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "ABI", PACKED_ABI) < 0 ||
                      PyModule_AddStringConstant(m, "SOURCE", PACKED_SOURCE) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
