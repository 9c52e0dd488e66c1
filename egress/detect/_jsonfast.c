/* The JSON-RPC reader's byte work in C (egress/detect/jsonrpc.py): what a lenient JSON reader makes of a flow's
 * new bytes (`decode`), and how far a prefix decodes the same whatever follows (`inert_end`).
 *
 * Each function has a pure-Python twin that gives the same answer for every input: `decode` is jsonrpc.py's
 * `pure_decode` (NULs and byte-order marks dropped by four `bytes.replace` in turn, then the `_ESCAPE` regular
 * expression's `sub`), `inert_end` its `pure_inert_end` (the last of `_INERT`'s bytes at or after `cut`, plus one;
 * 0 where none is). tests/detect/test_jsonfast.py compares both on every flow of both corpora (every prefix),
 * generated escapes, mutated and random bytes, and compares whole scans. Built by setup.py as an optional
 * extension; where it is missing, built from another version of this file (egress/detect/jsonfast.py checks the
 * SHA-256 below), or EGRESS_SCAN_PURE=1 asks for it, the pure twins run. An error here raises (MemoryError,
 * TypeError): the detectors' callers block on it, never forward.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define JSONFAST_ABI 1 /* jsonfast.py refuses a module of another ABI (a stale build) and runs the pure twins */
#ifndef JSONFAST_SOURCE
#define JSONFAST_SOURCE "" /* setup.py defines it: the SHA-256 of this file */
#endif

/* `bytes.replace(pattern, b"")` in place: leftmost occurrences, none overlapping, none made by a removal read.
 * The runs between occurrences of the pattern's first byte are moved whole (`memchr`, as `replace` searches). */
static Py_ssize_t drop(unsigned char *buf, Py_ssize_t len, const char *pattern, Py_ssize_t size) {
    const unsigned char first = (unsigned char)pattern[0];
    const unsigned char *found = memchr(buf, first, (size_t)len);
    if (found == NULL)
        return len;
    Py_ssize_t in = found - buf, out = in;
    while (in < len) {
        if (buf[in] == first && in + size <= len && memcmp(buf + in, pattern, (size_t)size) == 0) {
            in += size;
            continue;
        }
        found = in + 1 < len ? memchr(buf + in + 1, first, (size_t)(len - in - 1)) : NULL;
        Py_ssize_t stop = found != NULL ? found - buf : len;
        memmove(buf + out, buf + in, (size_t)(stop - in));
        out += stop - in;
        in = stop;
    }
    return out;
}

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* `[2-7][0-9a-fA-F]` at buf[at]: the code, or -1. */
static int printable(const unsigned char *buf, Py_ssize_t len, Py_ssize_t at) {
    if (at + 2 > len || buf[at] < '2' || buf[at] > '7')
        return -1;
    int low = hex_value(buf[at + 1]);
    return low < 0 ? -1 : (buf[at] - '0') * 16 + low;
}

/* `_ESCAPE` at buf[at] (a backslash): the match's length and its code (-1: ``\/``), or 0. The alternatives in the
 * expression's order: ``\u00XX``, ``\xXX``, ``\U000000XX`` (the optional ``0000`` is tried first), ``\U00XX``,
 * then ``\/``. */
static Py_ssize_t escape_at(const unsigned char *buf, Py_ssize_t len, Py_ssize_t at, int *code) {
    if (at + 1 >= len)
        return 0;
    switch (buf[at + 1]) {
    case 'u':
        if (at + 4 <= len && buf[at + 2] == '0' && buf[at + 3] == '0' && (*code = printable(buf, len, at + 4)) >= 0)
            return 6;
        return 0;
    case 'x':
        return (*code = printable(buf, len, at + 2)) >= 0 ? 4 : 0;
    case 'U':
        if (at + 8 <= len && memcmp(buf + at + 2, "000000", 6) == 0 && (*code = printable(buf, len, at + 8)) >= 0)
            return 10;
        if (at + 4 <= len && buf[at + 2] == '0' && buf[at + 3] == '0' && (*code = printable(buf, len, at + 4)) >= 0)
            return 6;
        return 0;
    case '/':
        *code = -1;
        return 2;
    default:
        return 0;
    }
}

/* `_ESCAPE.sub(_unescape, ...)` in place (the output is never longer than the input): from the first backslash. */
static Py_ssize_t unescape(unsigned char *buf, Py_ssize_t len) {
    const unsigned char *found = memchr(buf, '\\', (size_t)len);
    if (found == NULL)
        return len;
    Py_ssize_t in = found - buf, out = in;
    while (in < len) {
        int code = 0;
        Py_ssize_t size = buf[in] == '\\' ? escape_at(buf, len, in, &code) : 0;
        if (size == 0) {
            buf[out++] = buf[in++];
        } else if (code == 0x22 || code == 0x5C || code == 0x7F) { /* _KEPT_ESCAPES: the match as it was */
            memmove(buf + out, buf + in, (size_t)size);
            out += size;
            in += size;
        } else {
            buf[out++] = code < 0 ? '/' : (unsigned char)code;
            in += size;
        }
    }
    return out;
}

/* The bytes any step of `decode` reads: NUL, the byte-order marks' first bytes, the backslash. */
static unsigned char read_by_decode[256];

static PyObject *decode(PyObject *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "decode() takes bytes");
        return NULL;
    }
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data), at;
    /* Most bytes hold none of the bytes any step reads: then the answer is ``data`` itself, as the twin's is. */
    for (at = 0; at < len; at++)
        if (read_by_decode[raw[at]])
            break;
    if (at == len)
        return Py_NewRef(data);
    unsigned char *buf = PyMem_Malloc(len > 0 ? (size_t)len : 1);
    if (buf == NULL)
        return PyErr_NoMemory();
    memcpy(buf, raw, (size_t)len);
    Py_ssize_t size = drop(buf + at, len - at, "\x00", 1) + at; /* none of the four starts before ``at`` */
    size = drop(buf, size, "\xef\xbb\xbf", 3);
    size = drop(buf, size, "\xff\xfe", 2);
    size = drop(buf, size, "\xfe\xff", 2);
    size = unescape(buf, size);
    PyObject *out = size == len && memcmp(buf, raw, (size_t)len) == 0
                        ? Py_NewRef(data)
                        : PyBytes_FromStringAndSize((const char *)buf, size);
    PyMem_Free(buf);
    return out;
}

/* `_INERT`: bytes that no step of `decode` reads or removes. */
static unsigned char inert[256];

static PyObject *inert_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "inert_end(data: bytes, cut: int)");
        return NULL;
    }
    Py_ssize_t cut = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (cut == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    if (cut < 0) { /* `bytes.rfind`'s start, as a slice's */
        cut += len;
        if (cut < 0)
            cut = 0;
    }
    for (Py_ssize_t at = len - 1; at >= cut; at--)
        if (inert[raw[at]])
            return PyLong_FromSsize_t(at + 1);
    return PyLong_FromLong(0);
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)decode, METH_O, "jsonrpc.pure_decode: decode(data) -> bytes."},
    {"inert_end", (PyCFunction)(void (*)(void))inert_end, METH_FASTCALL,
     "jsonrpc.pure_inert_end: inert_end(data, cut) -> int."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsonfast",
                                    "The JSON-RPC reader's byte work (see jsonfast.py).", -1, methods};

PyMODINIT_FUNC PyInit__jsonfast(void) {
    for (const char *byte = "\n,}\": {[]\r\t"; *byte; byte++)
        inert[(unsigned char)*byte] = 1;
    read_by_decode[0x00] = read_by_decode[0x5C] = read_by_decode[0xEF] = read_by_decode[0xFF] = 1;
    read_by_decode[0xFE] = 1;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "ABI", JSONFAST_ABI) < 0 ||
                      PyModule_AddStringConstant(m, "SOURCE", JSONFAST_SOURCE) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
