/* The scanner's hot path in C: pcap record framing and the per-packet skip test of `egress scan`.
 *
 * Each function here has a pure-Python twin (in egress/capture/hot.py; for frame_pcapng, reader.py's block walk)
 * that gives the same result for every input; tests/capture/test_hot.py runs both over the whole corpus and
 * compares. Nothing here allocates a Python object per packet except the 12-byte flow key of a frame it looks up:
 * a skipped packet costs a few loads, one bytes object and one dict lookup. Built by setup.py as an optional extension; where it is missing or its ABI differs
 * from hot.py's, the pure path runs (docs/scanner-hot-path.md says why C and not Cython or mypyc).
 *
 * Compiled with -ffp-contract=off: `sec + frac * scale` must round as Python's two float operations do.
 * (Python's int-to-float conversion and C's (double) of a uint64 both round to nearest, ties to even.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HOT_ABI 5 /* hot.py refuses a module of another ABI (a stale build) and runs the pure path */
#ifndef HOT_SOURCE
#define HOT_SOURCE "" /* setup.py defines it: the SHA-256 of this file, checked by hot.py against the source */
#endif
#define MAX_RECORD (1 << 24) /* reader.MAX_RECORD */

static inline uint32_t read32(const unsigned char *p, int big) {
    if (big)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | (uint32_t)p[0];
}

/* The framing functions' answer (pos, spans, stamps), the two arrays cut to the `count` records written; the
 * references to spans and stamps are taken over (both released on an error). */
static PyObject *framed(Py_ssize_t pos, PyObject *spans, PyObject *stamps, Py_ssize_t count) {
    if (_PyBytes_Resize(&spans, count * 3 * (Py_ssize_t)sizeof(int64_t)) < 0) {
        Py_DECREF(stamps);
        return NULL;
    }
    if (_PyBytes_Resize(&stamps, count * (Py_ssize_t)sizeof(double)) < 0) {
        Py_DECREF(spans);
        return NULL;
    }
    return Py_BuildValue("(nNN)", pos, spans, stamps);
}

/* frame_pcap(buf, pos, big, linktype, scale) -> (pos, spans, stamps)
 * Every whole classic-pcap record of buf from pos: spans holds (start, caplen, linktype) as native int64 triples,
 * stamps the timestamps as native doubles; pos is where the first record that is not whole starts. */
static PyObject *frame_pcap(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    int big;
    long long linktype;
    double scale;
    if (!PyArg_ParseTuple(args, "y*npLd", &view, &pos, &big, &linktype, &scale))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t size = view.len;
    Py_ssize_t cap = pos < size ? (size - pos) / 16 + 1 : 1;
    PyObject *spans = PyBytes_FromStringAndSize(NULL, cap * 3 * (Py_ssize_t)sizeof(int64_t));
    PyObject *stamps = PyBytes_FromStringAndSize(NULL, cap * (Py_ssize_t)sizeof(double));
    if (spans == NULL || stamps == NULL) {
        Py_XDECREF(spans);
        Py_XDECREF(stamps);
        PyBuffer_Release(&view);
        return NULL;
    }
    int64_t *span = (int64_t *)PyBytes_AS_STRING(spans);
    double *stamp = (double *)PyBytes_AS_STRING(stamps);
    Py_ssize_t count = 0;
    while (pos >= 0 && pos + 16 <= size) {
        const unsigned char *head = buf + pos;
        uint32_t sec = read32(head, big), frac = read32(head + 4, big), caplen = read32(head + 8, big);
        Py_ssize_t end = pos + 16 + (Py_ssize_t)caplen;
        if (end > size)
            break;
        span[3 * count] = pos + 16;
        span[3 * count + 1] = caplen;
        span[3 * count + 2] = linktype;
        stamp[count] = (double)sec + (double)frac * scale;
        count++;
        pos = end;
    }
    PyBuffer_Release(&view);
    return framed(pos, spans, stamps, count);
}

/* frame_pcapng(buf, pos, big, linktypes, scales) -> (pos, spans, stamps)
 * The run of whole Enhanced Packet Blocks of buf from pos, in a section of the given byte order whose interfaces
 * have the link types (native int64) and timestamp scales (native double) given; pos is where the first block
 * that is something else starts (another block type, a block not whole, or one that is corrupt: reader.py's
 * block walk reads it and says what is wrong). */
static PyObject *frame_pcapng(PyObject *self, PyObject *args) {
    Py_buffer view, typev, scalev;
    Py_ssize_t pos;
    int big;
    if (!PyArg_ParseTuple(args, "y*npy*y*", &view, &pos, &big, &typev, &scalev))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t size = view.len;
    const int64_t *linktypes = typev.buf;
    const double *scales = scalev.buf;
    Py_ssize_t interfaces = typev.len / (Py_ssize_t)sizeof(int64_t);
    if (scalev.len / (Py_ssize_t)sizeof(double) < interfaces)
        interfaces = scalev.len / (Py_ssize_t)sizeof(double);
    Py_ssize_t cap = pos < size ? (size - pos) / 28 + 1 : 1;
    PyObject *spans = PyBytes_FromStringAndSize(NULL, cap * 3 * (Py_ssize_t)sizeof(int64_t));
    PyObject *stamps = PyBytes_FromStringAndSize(NULL, cap * (Py_ssize_t)sizeof(double));
    if (spans == NULL || stamps == NULL) {
        Py_XDECREF(spans);
        Py_XDECREF(stamps);
        PyBuffer_Release(&view);
        PyBuffer_Release(&typev);
        PyBuffer_Release(&scalev);
        return NULL;
    }
    int64_t *span = (int64_t *)PyBytes_AS_STRING(spans);
    double *stamp = (double *)PyBytes_AS_STRING(stamps);
    Py_ssize_t count = 0;
    while (pos >= 0 && size - pos >= 28) {
        const unsigned char *block = buf + pos;
        uint32_t btype = read32(block, big), blen = read32(block + 4, big);
        if (btype != 6 || blen < 28 || blen > MAX_RECORD || blen % 4 || pos + (Py_ssize_t)blen > size)
            break;
        uint32_t iface = read32(block + 8, big), high = read32(block + 12, big), low = read32(block + 16, big);
        uint32_t caplen = read32(block + 20, big);
        if (iface >= (uint64_t)interfaces || 28 + (uint64_t)caplen > blen)
            break;
        span[3 * count] = pos + 28;
        span[3 * count + 1] = caplen;
        span[3 * count + 2] = linktypes[iface];
        stamp[count] = (double)((uint64_t)high << 32 | low) * scales[iface];
        count++;
        pos += blen;
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&typev);
    PyBuffer_Release(&scalev);
    return framed(pos, spans, stamps, count);
}

/* The arguments sweep and step share: (buf, spans, stamps, index, tcp, udp, done[, icmp]), the three buffers
 * held until `release_args`. No icmp (or None) keeps to the rules without the ICMP table (hot.sweep). */
typedef struct {
    Py_buffer buf, spans, stamps;
    Py_ssize_t index, count; /* count: the records both spans and stamps hold */
    PyObject *tcp, *udp, *done, *icmp; /* borrowed; icmp NULL for None or absent */
} Args;

/* Read sweep's or step's arguments into `a` (its buffers then held): 0, or -1 with an exception set and nothing
 * held (`name` is the function's, for the messages). A negative index is refused (it would read before spans).
 * METH_FASTCALL and the buffers asked for directly: the scanner calls these once per slow-path record (40 % of
 * the loop's), and PyArg_ParseTuple's format walk and "y*" converters cost about 5,000 instructions a call,
 * more than the sweep itself (docs/scanner-hot-path.md, scan15). */
static int parse_args(const char *name, PyObject *const *args, Py_ssize_t nargs, Args *a) {
    if (nargs != 7 && nargs != 8) {
        PyErr_Format(PyExc_TypeError, "%s() takes 7 or 8 arguments (%zd given)", name, nargs);
        return -1;
    }
    a->tcp = args[4];
    a->udp = args[5];
    a->done = args[6];
    a->icmp = nargs == 8 && args[7] != Py_None ? args[7] : NULL;
    if (!PyDict_Check(a->tcp) || !PyDict_Check(a->udp) || (a->icmp != NULL && !PyDict_Check(a->icmp))) {
        PyErr_Format(PyExc_TypeError, "%s() wants dicts for tcp and udp, and a dict or None for icmp", name);
        return -1;
    }
    a->index = PyNumber_AsSsize_t(args[3], PyExc_OverflowError);
    if (a->index == -1 && PyErr_Occurred())
        return -1;
    if (a->index < 0) {
        PyErr_Format(PyExc_ValueError, "%s() wants an index of 0 or more", name);
        return -1;
    }
    if (PyObject_GetBuffer(args[0], &a->buf, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], &a->spans, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&a->buf);
        return -1;
    }
    if (PyObject_GetBuffer(args[2], &a->stamps, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&a->buf);
        PyBuffer_Release(&a->spans);
        return -1;
    }
    a->count = a->stamps.len / (Py_ssize_t)sizeof(double);
    if (a->spans.len / (Py_ssize_t)(3 * sizeof(int64_t)) < a->count)
        a->count = a->spans.len / (Py_ssize_t)(3 * sizeof(int64_t));
    return 0;
}

static void release_args(Args *a) {
    PyBuffer_Release(&a->buf);
    PyBuffer_Release(&a->spans);
    PyBuffer_Release(&a->stamps);
}

/* The Ethernet frame of record `index` (its bytes in `*frame`, its length returned), or -1 where the record is
 * past the last, of another link type, or out of the buffer's bounds. */
static int64_t ethernet_at(const Args *a, Py_ssize_t index, const unsigned char **frame) {
    const int64_t *span = a->spans.buf;
    if (index < 0 || index >= a->count)
        return -1;
    int64_t start = span[3 * index], length = span[3 * index + 1];
    if (span[3 * index + 2] != 1 || start < 0 || length < 0 || start + length > a->buf.len)
        return -1;
    *frame = (const unsigned char *)a->buf.buf + start;
    return length;
}

/* sweep's loop over the records of `a` from its index on: the index it stops at (the record count when it
 * passes them all), or -1 with an exception set. */
static Py_ssize_t sweep_from(const Args *a) {
    PyObject *tcp = a->tcp, *udp = a->udp, *done = a->done, *icmp = a->icmp;
    Py_ssize_t index = a->index;
    for (; index < a->count; index++) {
        const unsigned char *f;
        int64_t length = ethernet_at(a, index, &f);
        if (length < 0)
            break;
        if (length < 14 || f[12] != 8 || f[13] != 0) {
            unsigned ethertype = length >= 14 ? (unsigned)f[12] << 8 | f[13] : 0;
            if (icmp == NULL || ethertype == 0x0800 || ethertype == 0x86DD || ethertype == 0x8100 ||
                ethertype == 0x88A8 || ethertype == 0x9100)
                break;
            continue; /* no IP in it: packet.decode says None */
        }
        if (length < 34 || !(f[14] == 0x45 && !(f[20] & 0x3F) && !f[21]))
            break;
        unsigned char proto = f[23];
        if (proto == 1) {
            if (icmp == NULL || length < 42 || ((f[16] << 8) | f[17]) < 28)
                break;
            char raw[12]; /* the addresses and the echo identifier twice: packet.decode's ICMP ports */
            memcpy(raw, f + 26, 8);
            memcpy(raw + 8, f + 38, 2);
            memcpy(raw + 10, f + 38, 2);
            PyObject *key = PyBytes_FromStringAndSize(raw, 12);
            if (key == NULL)
                return -1;
            PyObject *entry = PyDict_GetItemWithError(icmp, key); /* borrowed; compared only */
            Py_DECREF(key);
            if (entry == NULL && PyErr_Occurred())
                return -1;
            if (entry == done)
                continue;
            break;
        }
        if (length < 54 || (proto != 6 && proto != 17))
            break;
        PyObject *key = PyBytes_FromStringAndSize((const char *)f + 26, 12);
        if (key == NULL)
            return -1;
        PyObject *entry = PyDict_GetItemWithError(proto == 6 ? tcp : udp, key); /* borrowed; compared only */
        Py_DECREF(key);
        if (entry == NULL && PyErr_Occurred())
            return -1;
        if (proto == 6) {
            if (entry == done) {
                if ((f[47] & 0x12) != 0x02) /* not a SYN without ACK: a decided flow's packet */
                    continue;
                break;
            }
            /* a bare ACK (no SYN, FIN, RST, no payload) of a flow being inspected: nothing to reassemble */
            if (entry != NULL && !(f[47] & 0x07) && ((f[16] << 8) | f[17]) == 20 + ((f[46] >> 4) << 2))
                continue;
            break;
        }
        if (entry == done)
            continue;
        break;
    }
    return index;
}

/* sweep(buf, spans, stamps, index, tcp, udp, done[, icmp]) -> index
 * From record `index` on, pass over every record the scanner skips on its raw bytes; return the index of the
 * first one the slow path must see, or the record count. The rules are hot.sweep's, which documents them. */
static PyObject *sweep(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Args a;
    if (parse_args("sweep", args, nargs, &a) < 0)
        return NULL;
    Py_ssize_t index = sweep_from(&a);
    release_args(&a);
    if (index < 0)
        return NULL;
    return PyLong_FromSsize_t(index);
}

/* The fields of a common slow-path frame (`segment`), read without making objects of them. */
typedef struct {
    unsigned char proto;
    const unsigned char *ip;   /* the IPv4 header: the addresses at ip + 12 and ip + 16 */
    const unsigned char *ports; /* the transport header: the ports in its first four bytes */
    const unsigned char *payload;
    Py_ssize_t size; /* of the payload */
    long flags;
    unsigned long seq;
} Parsed;

/* Whether the `size` bytes at `f` are a frame `segment` reads (filling `out`), or one it answers None for. */
static int parse_segment(const unsigned char *f, Py_ssize_t size, Parsed *out) {
    if (size < 34 || f[12] != 8 || f[13] != 0 || (f[14] >> 4) != 4)
        return 0;
    Py_ssize_t ihl = (Py_ssize_t)(f[14] & 0x0F) * 4, total = (Py_ssize_t)f[16] << 8 | f[17];
    unsigned char proto = f[23];
    if (ihl < 20 || total < ihl || (((f[20] << 8) | f[21]) & 0x3FFF) || (proto != 6 && proto != 17))
        return 0;
    Py_ssize_t end = 14 + total < size ? 14 + total : size;
    Py_ssize_t start = 14 + ihl; /* the transport header; the body is f[start:end], empty when end <= start */
    Py_ssize_t body = end > start ? end - start : 0;
    const unsigned char *b = f + start;
    Py_ssize_t from, to;
    long flags = 0;
    unsigned long seq = 0;
    if (proto == 6) {
        if (body < 20 || (b[12] >> 4) < 5)
            return 0;
        from = (Py_ssize_t)(b[12] >> 4) * 4;
        to = body;
        flags = b[13];
        seq = (unsigned long)b[4] << 24 | (unsigned long)b[5] << 16 | (unsigned long)b[6] << 8 | b[7];
    } else {
        if (body < 8)
            return 0;
        Py_ssize_t length = (Py_ssize_t)b[4] << 8 | b[5];
        from = 8;
        to = length >= 8 && length < body ? length : body;
    }
    if (from > to)
        from = to; /* a data offset past the body: an empty payload, as a Python slice gives */
    out->proto = proto;
    out->ip = f + 14;
    out->ports = b;
    out->payload = b + from;
    out->size = to - from;
    out->flags = flags;
    out->seq = seq;
    return 1;
}

/* The tuple `segment` answers for a parsed frame, or NULL with an exception set. Built item by item:
 * Py_BuildValue walks its format string at every call (about 700 instructions of the ~1,000 it took). */
static PyObject *fields_of(const Parsed *p) {
    const unsigned char *b = p->ports;
    PyObject *items[8] = {
        PyLong_FromLong(p->proto),
        PyBytes_FromStringAndSize((const char *)p->ip + 12, 4),
        PyBytes_FromStringAndSize((const char *)p->ip + 16, 4),
        PyLong_FromLong(b[0] << 8 | b[1]),
        PyLong_FromLong(b[2] << 8 | b[3]),
        PyBytes_FromStringAndSize((const char *)p->payload, p->size),
        PyLong_FromLong(p->flags),
        PyLong_FromUnsignedLong(p->seq),
    };
    PyObject *fields = PyTuple_New(8);
    for (int i = 0; i < 8; i++) {
        if (items[i] == NULL || fields == NULL) {
            for (int j = 0; j < 8; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(fields);
            return NULL;
        }
    }
    for (int i = 0; i < 8; i++)
        PyTuple_SET_ITEM(fields, i, items[i]);
    return fields;
}

/* segment(frame) -> (proto, src, dst, sport, dport, payload, flags, seq) or None
 * packet.decode's TCP or UDP segment of an Ethernet frame (no VLAN tag) carrying unfragmented IPv4 whose headers
 * are whole and consistent; None for every other frame, which the caller decodes in Python (and which raises
 * there when it is malformed). Same offsets and clipping as packet.decode, _ipv4 and _transport. */
static PyObject *segment(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "segment() wants bytes");
        return NULL;
    }
    Parsed parsed;
    if (!parse_segment((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg), &parsed))
        Py_RETURN_NONE;
    return fields_of(&parsed);
}

/* step(buf, spans, stamps, index, tcp, udp, done[, icmp]) -> index or (index, fields, key, reverse, entry)
 * `sweep` from `index`, then, where the record it stops at is an Ethernet frame `segment` reads, that frame's
 * segment as the scanner's slow path takes it: its fields, its flow key (src + dst + sport + dport, as the
 * scanner packs them), the other direction's, and the key's entry in `tcp` or `udp` (None where absent). The
 * index alone otherwise (the record count at the end). hot.step is its twin, which documents it. */
static PyObject *step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Args a;
    if (parse_args("step", args, nargs, &a) < 0)
        return NULL;
    PyObject *answer = NULL;
    Py_ssize_t index = sweep_from(&a);
    const unsigned char *frame;
    int64_t length = index < 0 ? -1 : ethernet_at(&a, index, &frame);
    Parsed parsed;
    if (index < 0)
        goto out;
    if (length < 0 || !parse_segment(frame, length, &parsed)) {
        answer = PyLong_FromSsize_t(index);
        goto out;
    }
    char raw[24]; /* the key, then the reverse key */
    memcpy(raw, parsed.ip + 12, 8);
    memcpy(raw + 8, parsed.ports, 4);
    memcpy(raw + 12, parsed.ip + 16, 4);
    memcpy(raw + 16, parsed.ip + 12, 4);
    memcpy(raw + 20, parsed.ports + 2, 2);
    memcpy(raw + 22, parsed.ports, 2);
    PyObject *fields = fields_of(&parsed);
    PyObject *key = PyBytes_FromStringAndSize(raw, 12);
    PyObject *reverse = PyBytes_FromStringAndSize(raw + 12, 12);
    PyObject *at = PyLong_FromSsize_t(index);
    PyObject *entry = fields && key && reverse && at ? PyDict_GetItemWithError(parsed.proto == 6 ? a.tcp : a.udp, key)
                                                    : NULL;
    if (fields && key && reverse && at && !(entry == NULL && PyErr_Occurred()))
        answer = PyTuple_Pack(5, at, fields, key, reverse, entry == NULL ? Py_None : entry);
    Py_XDECREF(fields);
    Py_XDECREF(key);
    Py_XDECREF(reverse);
    Py_XDECREF(at);
out:
    release_args(&a);
    return answer;
}

static PyMethodDef methods[] = {
    {"segment", segment, METH_O, "The TCP or UDP segment of a plain Ethernet IPv4 frame, or None."},
    {"frame_pcap", frame_pcap, METH_VARARGS, "Whole pcap records of a buffer: (pos, spans, stamps)."},
    {"frame_pcapng", frame_pcapng, METH_VARARGS, "Whole enhanced packet blocks of a buffer: (pos, spans, stamps)."},
    {"sweep", (PyCFunction)(void (*)(void))sweep, METH_FASTCALL,
     "Skip the records judged on their raw bytes; the index of the next one."},
    {"step", (PyCFunction)(void (*)(void))step, METH_FASTCALL,
     "sweep, then the segment, keys and table entry of the record it stops at, where segment reads it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hot", "egress scan's hot path (see hot.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__hot(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL &&
        (PyModule_AddIntConstant(m, "ABI", HOT_ABI) < 0 || PyModule_AddStringConstant(m, "SOURCE", HOT_SOURCE) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
