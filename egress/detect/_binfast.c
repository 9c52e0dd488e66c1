/* binrpc's per-prefix byte searches in C (egress/detect/binrpc.py): where an ASN.1 BER constructed string may
 * start (`ber_heads`), which `ff` bytes may end a CBOR chunked name (`breaks`), and whether the new bytes hold a
 * name's anchor in any case (`anchored`, since scan22).
 *
 * Each function has a pure-Python twin in binrpc.py that gives the same answer for every input: `ber_heads` is
 * `pure_ber_heads` (the starts of `_BER_HEAD.finditer`), `breaks` is `pure_breaks` (the `ff` bytes `_chunked` walks
 * back from), `anchored` is `pure_anchored` (a lowered copy and a `bytes.find` for each of `_ANCHORS`, which
 * `ANCHORS` below repeats). The regular expressions test
 * a charset at every byte (`_BER_HEAD`'s first byte is one binary byte in five) and the `ff` walk is a Python loop
 * per `ff`; here each is one pass over the bytes with a table. tests/detect/test_binfast.py compares both on every
 * flow of both corpora (every prefix), generated heads, pieces and breaks, mutated and random bytes. (`_lettered`,
 * the gate before the head search, stays Python: compiled it saved 0.8 % of a scan, docs/scanner-hot-path.md.) Built by
 * setup.py as an optional extension; where it is missing, built from another version of this file
 * (egress/detect/binfast.py checks the SHA-256 below), or EGRESS_SCAN_PURE=1 asks for it, the pure twins run. An
 * error here raises (MemoryError, TypeError): the detectors' callers block on it, never forward.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define BINFAST_ABI 2 /* binfast.py refuses a module of another ABI (a stale build) and runs the pure twins */
#ifndef BINFAST_SOURCE
#define BINFAST_SOURCE "" /* setup.py defines it: the SHA-256 of this file */
#endif

enum {
    HEAD = 1,        /* `_BER_HEAD`'s first byte: a constructed string tag or a context tag a0-bf */
    PIECE = 2,       /* a primitive piece's tag: 04, 0c, 16 */
    NESTED = 4,      /* a constructed piece's tag: 24, 2c, 36 */
    OPENS = 8,       /* what may open a name's piece: m M e E g G s S, NUL, space */
    RUN = 64,        /* binrpc._RUN_BYTES: 00-7b, 7f */
    BEFORE_BREAK = 128, /* binrpc._BEFORE_BREAK */
};
static unsigned char kind[256];

/* The bytes argument and the start offset of a call (data, start), or -1 with an exception set. */
static int args_of(const char *name, PyObject *const *args, Py_ssize_t nargs, const unsigned char **data,
                   Py_ssize_t *len, Py_ssize_t *start) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() takes bytes and an offset", name);
        return -1;
    }
    *start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (*start == -1 && PyErr_Occurred())
        return -1;
    *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    *len = PyBytes_GET_SIZE(args[0]);
    return 0;
}

/* `bytes.find`'s start: a negative one counts from the end, as a slice's does. */
static Py_ssize_t find_start(Py_ssize_t start, Py_ssize_t len) {
    if (start < 0) {
        start += len;
        if (start < 0)
            start = 0;
    }
    return start;
}

/* Append `at` to the list `found`: 0, or -1 with an exception set. */
static int append_offset(PyObject *found, Py_ssize_t at) {
    PyObject *offset = PyLong_FromSsize_t(at);
    if (offset == NULL)
        return -1;
    int failed = PyList_Append(found, offset);
    Py_DECREF(offset);
    return failed;
}

/* Whether _BER_HEAD's lookahead holds after the tag at `at` (the length, then a piece or a nested head). */
static int head_at(const unsigned char *d, Py_ssize_t n, Py_ssize_t at) {
    Py_ssize_t q = at + 1;
    if (q >= n)
        return 0;
    unsigned char b = d[q];
    if (b == 0x80 || (b >= 0x04 && b <= 0x7F))
        q += 1;
    else if (b == 0x81 && q + 1 < n && d[q + 1] >= 0x04)
        q += 2;
    else if (b == 0x82 && q + 2 < n && d[q + 1] <= 0x01)
        q += 3;
    else
        return 0;
    if (q + 1 >= n)
        return 0;
    unsigned char tag = d[q], u = d[q + 1];
    if (kind[tag] & PIECE) { /* \x00 | \x81\x00 | (\x81)?[\x01-\x40][mMeEgGsS\x00 ] */
        if (u == 0x00)
            return 1;
        if (u == 0x81)
            return q + 2 < n && (d[q + 2] == 0x00 || (d[q + 2] >= 0x01 && d[q + 2] <= 0x40 && q + 3 < n &&
                                                        (kind[d[q + 3]] & OPENS)));
        return u >= 0x01 && u <= 0x40 && q + 2 < n && (kind[d[q + 2]] & OPENS);
    }
    if (kind[tag] & NESTED) { /* (\x80|[\x02-\x7f]|\x81[\x02-\xff]) then a piece's or a nested tag */
        Py_ssize_t r;
        if (u == 0x80 || (u >= 0x02 && u <= 0x7F))
            r = q + 2;
        else if (u == 0x81 && q + 2 < n && d[q + 2] >= 0x02)
            r = q + 3;
        else
            return 0;
        return r < n && (kind[d[r]] & (PIECE | NESTED));
    }
    return 0;
}

/* ber_heads(data, start) -> list of the offsets where _BER_HEAD matches from start on (a negative start is 0, as
 * a pattern's pos is). */
static PyObject *ber_heads(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *d;
    Py_ssize_t n, at;
    if (args_of("ber_heads", args, nargs, &d, &n, &at) < 0)
        return NULL;
    if (at < 0)
        at = 0;
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    for (; at < n; at++) {
        if (!(kind[d[at]] & HEAD) || !head_at(d, n, at))
            continue;
        if (append_offset(found, at) < 0) {
            Py_DECREF(found);
            return NULL;
        }
    }
    return found;
}

/* breaks(data, start) -> list of the offsets of the `ff` bytes from start on (`bytes.find`'s start) that may end a
 * chunked name: at offset 5 or more, a byte of _BEFORE_BREAK before it and the five before it all _RUN_BYTES. */
static PyObject *breaks(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *d;
    Py_ssize_t n, at;
    if (args_of("breaks", args, nargs, &d, &n, &at) < 0)
        return NULL;
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    for (at = find_start(at, n); at < n; at++) {
        const unsigned char *ff = memchr(d + at, 0xFF, (size_t)(n - at));
        if (ff == NULL)
            break;
        at = ff - d;
        if (at < 5 || !(kind[d[at - 1]] & BEFORE_BREAK) || !(kind[d[at - 2]] & RUN) || !(kind[d[at - 3]] & RUN) ||
            !(kind[d[at - 4]] & RUN) || !(kind[d[at - 5]] & RUN))
            continue;
        if (append_offset(found, at) < 0) {
            Py_DECREF(found);
            return NULL;
        }
    }
    return found;
}

/* binrpc._ANCHORS, lowered (tests/detect/test_binfast.py holds `anchored` to `pure_anchored`, which reads them
 * from binrpc.py); each opens with its own lowercase letter */
static const char *const ANCHORS[] = {"mining.", "eth_", "block", "getwork"};
#define N_ANCHORS (sizeof ANCHORS / sizeof *ANCHORS)
static size_t anchor_size[N_ANCHORS];
static unsigned char anchor_of[256]; /* 1 + the anchor a byte opens, in either case; 0 for none */

/* Whether an anchor starts at `at` in any case (as `bytes.lower` lowers: A-Z alone). */
static int anchor_at(const unsigned char *d, Py_ssize_t n, Py_ssize_t at) {
    unsigned a = anchor_of[d[at]];
    if (!a)
        return 0;
    const char *lowered = ANCHORS[a - 1];
    size_t size = anchor_size[a - 1];
    if ((size_t)(n - at) < size)
        return 0;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = d[at + (Py_ssize_t)i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)lowered[i])
            return 0;
    }
    return 1;
}

/* anchored(data, start) -> whether data[start:] (a slice's start: a negative one counts from the end) holds one of
 * `ANCHORS` in any case: `data[start:].lower().find(anchor) >= 0` for one of them. With SSE2, 16 bytes at a time
 * are compared with the four first letters (each byte with bit 5 set: the letter in either case, and nothing
 * else), and only those places tested whole. */
static PyObject *anchored(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *d;
    Py_ssize_t n, at;
    if (args_of("anchored", args, nargs, &d, &n, &at) < 0)
        return NULL;
    at = find_start(at, n);
#ifdef __SSE2__
    const __m128i fold = _mm_set1_epi8(0x20), m = _mm_set1_epi8('m'), e = _mm_set1_epi8('e');
    const __m128i b = _mm_set1_epi8('b'), g = _mm_set1_epi8('g');
    for (; at + 16 <= n; at += 16) {
        __m128i v = _mm_or_si128(_mm_loadu_si128((const __m128i *)(const void *)(d + at)), fold);
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, m), _mm_cmpeq_epi8(v, e)),
                                   _mm_or_si128(_mm_cmpeq_epi8(v, b), _mm_cmpeq_epi8(v, g)));
        unsigned bits = (unsigned)_mm_movemask_epi8(hit);
        while (bits) {
            if (anchor_at(d, n, at + __builtin_ctz(bits)))
                Py_RETURN_TRUE;
            bits &= bits - 1;
        }
    }
#endif
    for (; at < n; at++)
        if (anchor_at(d, n, at))
            Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"ber_heads", (PyCFunction)(void (*)(void))ber_heads, METH_FASTCALL,
     "binrpc.pure_ber_heads: ber_heads(data, start) -> list[int]."},
    {"breaks", (PyCFunction)(void (*)(void))breaks, METH_FASTCALL,
     "binrpc.pure_breaks: breaks(data, start) -> list[int]."},
    {"anchored", (PyCFunction)(void (*)(void))anchored, METH_FASTCALL,
     "binrpc.pure_anchored: anchored(data, start) -> bool."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_binfast",
                                    "binrpc's per-prefix byte searches (see binfast.py).", -1, methods};

static void mark(const char *bytes, Py_ssize_t size, unsigned char flag) {
    for (Py_ssize_t i = 0; i < size; i++)
        kind[(unsigned char)bytes[i]] |= flag;
}

PyMODINIT_FUNC PyInit__binfast(void) {
    mark("\x24\x2c\x32\x33\x34\x35\x36\x39\x3a\x3b\x3c", 11, HEAD);
    for (int b = 0xA0; b <= 0xBF; b++)
        kind[b] |= HEAD;
    mark("\x04\x0c\x16", 3, PIECE);
    mark("\x24\x2c\x36", 3, NESTED);
    mark("mMeEgGsS\x00 ", 10, OPENS);
    for (size_t a = 0; a < N_ANCHORS; a++) {
        anchor_size[a] = strlen(ANCHORS[a]);
        anchor_of[(unsigned char)ANCHORS[a][0]] = anchor_of[(unsigned char)ANCHORS[a][0] - 32] = (unsigned char)(a + 1);
    }
    for (int b = 0; b < 0x7C; b++)
        kind[b] |= RUN;
    kind[0x7F] |= RUN;
    mark("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_. \x00\x40\x60", 68, BEFORE_BREAK);
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "ABI", BINFAST_ABI) < 0 ||
                      PyModule_AddStringConstant(m, "SOURCE", BINFAST_SOURCE) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
