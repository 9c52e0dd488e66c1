/* The front's per-connection TLS work in C: the ClientHello's parse, the ServerHello's parse (the relay's shape
 * watcher reads the server's version and cipher suite from it) and the record framing of that watcher.
 *
 * Each function has a pure-Python twin that gives the same answer for every input: `client_hello` is
 * egress/detect/tls.py's `_parse_client_hello`, `server_hello` its `_parse_server_hello`, `frame` the framing loop of egress/detect/tlsshape.py's
 * `TlsShape.feed` (`_frame` there). tests/detect/test_tlsfast.py compares both on real, corpus and generated hellos
 * and records, every truncation of them and random bytes. Built by setup.py as an optional extension; where it is
 * missing, or built from another version of this file (egress/detect/tlsfast.py checks the SHA-256 below), the
 * pure twins run. An error here raises (MemoryError): the gate and the relay block on it, never forward.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#define TLSFAST_ABI 2 /* tlsfast.py refuses a module of another ABI (a stale build) and runs the pure twins */
#ifndef TLSFAST_SOURCE
#define TLSFAST_SOURCE "" /* setup.py defines it: the SHA-256 of this file */
#endif
#define HANDSHAKE 22
#define CLIENT_HELLO 1
#define SERVER_HELLO 2
#define CERTIFICATE 11
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43
#define MAX_RECORD ((1 << 14) + 2048) /* tls._MAX_RECORD */

/* A bounds-checked cursor: tls._Reader. A read past the end sets `shortfall` (tls._Short) and reads nothing. */
typedef struct {
    const uint8_t *data;
    Py_ssize_t len, pos;
    int shortfall;
} reader;

static int take(reader *r, Py_ssize_t n, const uint8_t **out) {
    if (r->shortfall || r->pos + n > r->len) {
        r->shortfall = 1;
        return 0;
    }
    *out = r->data + r->pos;
    r->pos += n;
    return 1;
}

static int u8(reader *r, Py_ssize_t *v) {
    const uint8_t *p;
    if (!take(r, 1, &p))
        return 0;
    *v = p[0];
    return 1;
}

static int u16(reader *r, Py_ssize_t *v) {
    const uint8_t *p;
    if (!take(r, 2, &p))
        return 0;
    *v = (Py_ssize_t)p[0] << 8 | p[1];
    return 1;
}

/* A vector with an 8- or 16-bit length: its bytes become a sub-reader. */
static int vec(reader *r, int wide, reader *out) {
    Py_ssize_t n;
    const uint8_t *p;
    if (!(wide ? u16(r, &n) : u8(r, &n)) || !take(r, n, &p))
        return 0;
    out->data = p;
    out->len = n;
    out->pos = 0;
    out->shortfall = 0;
    return 1;
}

/* bytes.decode("ascii", "replace"), lowered (str.lower changes only A-Z of such a string) when `lower`. */
static PyObject *ascii_text(const uint8_t *p, Py_ssize_t n, int lower) {
    if (!lower)
        return PyUnicode_DecodeASCII((const char *)p, n, "replace");
    char small[256];
    char *buf = n <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc(n > 0 ? n : 1);
    if (buf == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++)
        buf[i] = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] + 32) : (char)p[i];
    PyObject *text = PyUnicode_DecodeASCII(buf, n, "replace");
    if (buf != small)
        PyMem_Free(buf);
    return text;
}

/* tls._sni: the first host_name of a server_name extension, or None. A new reference. */
static PyObject *sni_of(const uint8_t *p, Py_ssize_t n) {
    reader body = {p, n, 0, 0}, names;
    if (!vec(&body, 1, &names))
        Py_RETURN_NONE;
    while (names.pos < names.len) {
        Py_ssize_t kind;
        reader name;
        if (!u8(&names, &kind) || !vec(&names, 1, &name))
            Py_RETURN_NONE;
        if (kind == 0)
            return ascii_text(name.data, name.len, 1);
    }
    Py_RETURN_NONE;
}

/* tls._alpn: the protocol names up to the first one cut short. A new reference. */
static PyObject *alpn_of(const uint8_t *p, Py_ssize_t n) {
    reader body = {p, n, 0, 0}, items;
    PyObject *names = PyList_New(0);
    if (names == NULL)
        return NULL;
    if (vec(&body, 1, &items)) {
        while (items.pos < items.len) {
            reader name;
            if (!vec(&items, 0, &name))
                break;
            PyObject *text = ascii_text(name.data, name.len, 0);
            if (text == NULL || PyList_Append(names, text) < 0) {
                Py_XDECREF(text);
                Py_DECREF(names);
                return NULL;
            }
            Py_DECREF(text);
        }
    }
    PyObject *out = PyList_AsTuple(names);
    Py_DECREF(names);
    return out;
}

static PyObject *u16_tuple(const uint8_t *p, Py_ssize_t count, Py_ssize_t stride_start) {
    PyObject *out = PyTuple_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *q = p + stride_start + 2 * i;
        PyObject *v = PyLong_FromLong((long)q[0] << 8 | q[1]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

/* The frozen slots dataclasses the parses return (tls.ClientHello, tls.ServerHello) made without their generated
 * __init__ (an object.__setattr__ per field: most of a parse's cost in C): the instance allocated and each field's
 * slot filled, as __init__ fills them (the classes have no defaults and no __post_init__). Each call site keeps the
 * slot offsets of the class it was given, read from its member descriptors; a class whose fields are not such
 * slots is called instead. tests/detect/test_tlsfast*.py compare the objects with those __init__ makes. */
typedef struct {
    PyTypeObject *type; /* a strong reference once resolved */
    Py_ssize_t offset[8];
    int usable;
} slots_of;

static void resolve(slots_of *cache, PyObject *make, const char *const *names, int n) {
    Py_CLEAR(cache->type);
    cache->usable = 0;
    if (!PyType_Check(make))
        return;
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemString(((PyTypeObject *)make)->tp_dict, names[i]); /* borrowed */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type))
            return;
        PyMemberDef *member = ((PyMemberDescrObject *)d)->d_member;
        if (member->type != Py_T_OBJECT_EX || (member->flags & Py_READONLY))
            return;
        cache->offset[i] = member->offset;
    }
    cache->type = (PyTypeObject *)Py_NewRef(make);
    cache->usable = 1;
}

/* make(*values), as the class's __init__ would; `values` are borrowed. */
static PyObject *build(slots_of *cache, PyObject *make, const char *const *names, PyObject *const *values, int n) {
    if (cache->type != (PyTypeObject *)make)
        resolve(cache, make, names, n);
    if (!cache->usable)
        return PyObject_Vectorcall(make, values, (size_t)n, NULL);
    PyObject *obj = cache->type->tp_alloc(cache->type, 0);
    if (obj == NULL)
        return NULL;
    for (int i = 0; i < n; i++)
        *(PyObject **)((char *)obj + cache->offset[i]) = Py_NewRef(values[i]);
    return obj;
}

static const char *const CLIENT_FIELDS[7] = {"version", "supported_versions", "sni", "alpn",
                                             "cipher_suites", "extensions", "truncated"};
static const char *const SERVER_FIELDS[4] = {"version", "cipher_suite", "extensions", "certificates"};
static slots_of client_slots, server_slots;

/* client_hello(prefix, partial, more, make): tls._parse_client_hello. None when the bytes are no ClientHello,
 * `more` while it is still arriving, else make(version, supported_versions, sni, alpn, cipher_suites, extensions,
 * truncated). */
static PyObject *client_hello(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "client_hello(prefix, partial, more, make)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int partial = PyObject_IsTrue(args[1]);
    PyObject *more = args[2], *make = args[3], *result = NULL;
    const uint8_t *prefix = view.buf;
    Py_ssize_t len = view.len;
    uint8_t *stream = NULL;
    if (partial < 0)
        goto done;
    /* tls._first_message */
    if (len < 3) {
        static const uint8_t start[2] = {HANDSHAKE, 3};
        result = memcmp(prefix, start, (size_t)len) == 0 ? more : Py_None;
        Py_INCREF(result);
        goto done;
    }
    if (!(prefix[0] == HANDSHAKE && prefix[1] == 3 && prefix[2] <= 4)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* tls._handshake_stream: the leading handshake records' payloads, joined */
    stream = PyMem_Malloc(len > 0 ? (size_t)len : 1);
    if (stream == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t slen = 0, offset = 0;
    int ended = 0;
    while (offset + 5 <= len) {
        const uint8_t *h = prefix + offset;
        Py_ssize_t length = (Py_ssize_t)h[3] << 8 | h[4];
        if (h[0] != HANDSHAKE || h[1] != 3 || h[2] > 4 || length > MAX_RECORD) {
            ended = 1;
            break;
        }
        Py_ssize_t have = len - (offset + 5);
        Py_ssize_t n = length < have ? length : have;
        memcpy(stream + slen, h + 5, (size_t)n);
        slen += n;
        offset += 5 + length;
    }
    if (slen && stream[0] != CLIENT_HELLO) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* tls._message */
    if (4 > slen) {
        result = ended || partial ? Py_None : more;
        Py_INCREF(result);
        goto done;
    }
    Py_ssize_t mlen = (Py_ssize_t)stream[1] << 16 | (Py_ssize_t)stream[2] << 8 | stream[3];
    Py_ssize_t blen = slen - 4 < mlen ? slen - 4 : mlen;
    int truncated = 0;
    if (blen < mlen) {
        if (!(partial || ended)) {
            result = Py_NewRef(more);
            goto done;
        }
        truncated = 1;
    }
    /* the hello's body */
    reader r = {stream + 4, blen, 0, 0}, skipped, suites;
    Py_ssize_t version = 0, nsuites = 0;
    const uint8_t *random;
    int have_suites = 0, nexts = 0;
    struct {
        Py_ssize_t kind;
        const uint8_t *data;
        Py_ssize_t len;
    } *exts = NULL;
    if (u16(&r, &version) && take(&r, 32, &random) && vec(&r, 0, &skipped) && vec(&r, 1, &suites)) {
        have_suites = 1;
        nsuites = suites.len / 2;
        if (vec(&r, 0, &skipped) && r.pos < r.len && r.len - r.pos >= 2) {
            /* tls._extensions: the whole extensions of the declared block, as far as the body goes */
            Py_ssize_t declared;
            u16(&r, &declared);
            Py_ssize_t left = r.len - r.pos;
            reader block = {r.data + r.pos, declared < left ? declared : left, 0, 0};
            exts = PyMem_Malloc(sizeof *exts * (size_t)(block.len / 4 + 1));
            if (exts == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            while (block.len - block.pos >= 4) {
                Py_ssize_t kind;
                reader body;
                u16(&block, &kind);
                if (!vec(&block, 1, &body))
                    break;
                exts[nexts].kind = kind;
                exts[nexts].data = body.data;
                exts[nexts].len = body.len;
                nexts++;
            }
        }
    }
    if (r.shortfall) {
        /* tls: `if not truncated or not suites: return None` (suites is empty unless two bytes of them came) */
        if (!truncated || !have_suites || nsuites == 0) {
            result = Py_NewRef(Py_None);
            goto cleanup;
        }
    }
    PyObject *sni = Py_NewRef(Py_None), *alpn = PyTuple_New(0), *versions = PyTuple_New(0);
    PyObject *suite_tuple = have_suites ? u16_tuple(suites.data, nsuites, 0) : PyTuple_New(0);
    PyObject *kinds = PyTuple_New(nexts);
    if (alpn == NULL || versions == NULL || suite_tuple == NULL || kinds == NULL)
        goto fields_done;
    for (int i = 0; i < nexts; i++) {
        PyObject *k = PyLong_FromSsize_t(exts[i].kind);
        if (k == NULL)
            goto fields_done;
        PyTuple_SET_ITEM(kinds, i, k);
        const uint8_t *e = exts[i].data;
        Py_ssize_t n = exts[i].len;
        if (exts[i].kind == EXT_SERVER_NAME) {
            Py_SETREF(sni, sni_of(e, n));
            if (sni == NULL)
                goto fields_done;
        } else if (exts[i].kind == EXT_ALPN) {
            Py_SETREF(alpn, alpn_of(e, n));
            if (alpn == NULL)
                goto fields_done;
        } else if (exts[i].kind == EXT_SUPPORTED_VERSIONS && n) {
            /* range(1, min(len(ext), ext[0] + 1) - 1, 2) */
            Py_ssize_t end = n < (Py_ssize_t)e[0] + 1 ? n : (Py_ssize_t)e[0] + 1;
            Py_ssize_t count = end - 1 > 1 ? (end - 1 - 1 + 1) / 2 : 0;
            Py_SETREF(versions, u16_tuple(e, count, 1));
            if (versions == NULL)
                goto fields_done;
        }
    }
    {
        PyObject *call[7] = {PyLong_FromSsize_t(version), versions, sni, alpn, suite_tuple, kinds,
                             truncated ? Py_True : Py_False};
        if (call[0] != NULL) {
            result = build(&client_slots, make, CLIENT_FIELDS, call, 7);
            Py_DECREF(call[0]);
        }
    }
fields_done:
    Py_XDECREF(sni);
    Py_XDECREF(alpn);
    Py_XDECREF(versions);
    Py_XDECREF(suite_tuple);
    Py_XDECREF(kinds);
cleanup:
    PyMem_Free(exts);
done:
    PyMem_Free(stream);
    PyBuffer_Release(&view);
    return result;
}

/* tls._handshake_stream: the leading handshake records' payloads of `prefix`, joined into `stream` (at least `len`
 * bytes); returns their length and sets `ended` when a record that is not a handshake record, or a bad header,
 * ended the run. */
static Py_ssize_t handshake_stream(const uint8_t *prefix, Py_ssize_t len, uint8_t *stream, int *ended) {
    Py_ssize_t slen = 0, offset = 0;
    *ended = 0;
    while (offset + 5 <= len) {
        const uint8_t *h = prefix + offset;
        Py_ssize_t length = (Py_ssize_t)h[3] << 8 | h[4];
        if (h[0] != HANDSHAKE || h[1] != 3 || h[2] > 4 || length > MAX_RECORD) {
            *ended = 1;
            break;
        }
        Py_ssize_t have = len - (offset + 5);
        Py_ssize_t n = length < have ? length : have;
        memcpy(stream + slen, h + 5, (size_t)n);
        slen += n;
        offset += 5 + length;
    }
    return slen;
}

/* tls._message at `offset` of the handshake stream: 1 with the message's kind, body and whether it is truncated;
 * 0 when the parse answers None; -1 when it answers MORE. */
static int message(const uint8_t *stream, Py_ssize_t slen, Py_ssize_t offset, int ended, int partial, int *kind,
                   const uint8_t **body, Py_ssize_t *blen, int *truncated) {
    if (offset + 4 > slen)
        return ended || partial ? 0 : -1;
    const uint8_t *m = stream + offset;
    Py_ssize_t mlen = (Py_ssize_t)m[1] << 16 | (Py_ssize_t)m[2] << 8 | m[3];
    Py_ssize_t have = slen - offset - 4;
    *kind = m[0];
    *body = m + 4;
    *blen = have < mlen ? have : mlen;
    *truncated = 0;
    if (*blen < mlen) {
        if (!(partial || ended))
            return -1;
        *truncated = 1;
    }
    return 1;
}

/* server_hello(prefix, partial, more, make): tls._parse_server_hello. None when the bytes are no ServerHello,
 * `more` while it (or, below TLS 1.3, the Certificate message after it) is still arriving, else make(version,
 * cipher_suite, extensions, certificates). */
static PyObject *server_hello(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "server_hello(prefix, partial, more, make)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int partial = PyObject_IsTrue(args[1]);
    PyObject *more = args[2], *make = args[3], *result = NULL, *kinds = NULL, *certs = NULL;
    const uint8_t *prefix = view.buf;
    Py_ssize_t len = view.len;
    uint8_t *stream = NULL;
    Py_ssize_t *exts = NULL;
    if (partial < 0)
        goto done;
    /* tls._first_message */
    if (len < 3) {
        static const uint8_t start[2] = {HANDSHAKE, 3};
        result = Py_NewRef(memcmp(prefix, start, (size_t)len) == 0 ? more : Py_None);
        goto done;
    }
    if (!(prefix[0] == HANDSHAKE && prefix[1] == 3 && prefix[2] <= 4)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    stream = PyMem_Malloc(len > 0 ? (size_t)len : 1);
    if (stream == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int ended, kind, truncated;
    Py_ssize_t slen = handshake_stream(prefix, len, stream, &ended), blen;
    const uint8_t *body;
    if (slen && stream[0] != SERVER_HELLO) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    int got = message(stream, slen, 0, ended, partial, &kind, &body, &blen, &truncated);
    if (got <= 0) {
        result = Py_NewRef(got < 0 ? more : Py_None);
        goto done;
    }
    /* the hello's body: version, random, session id, suite, compression */
    reader r = {body, blen, 0, 0}, skipped;
    Py_ssize_t version, suite, compression;
    const uint8_t *random;
    if (!(u16(&r, &version) && take(&r, 32, &random) && vec(&r, 0, &skipped) && u16(&r, &suite) &&
          u8(&r, &compression))) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* tls._extensions, when anything is left */
    Py_ssize_t nexts = 0;
    if (r.len - r.pos >= 2) {
        Py_ssize_t declared;
        u16(&r, &declared);
        Py_ssize_t left = r.len - r.pos;
        reader block = {r.data + r.pos, declared < left ? declared : left, 0, 0};
        exts = PyMem_Malloc(sizeof *exts * (size_t)(block.len / 4 + 1));
        if (exts == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        while (block.len - block.pos >= 4) {
            Py_ssize_t ext = 0;
            reader ebody;
            u16(&block, &ext);
            if (!vec(&block, 1, &ebody))
                break;
            exts[nexts++] = ext;
            if (ext == EXT_SUPPORTED_VERSIONS && ebody.len == 2)
                version = (Py_ssize_t)ebody.data[0] << 8 | ebody.data[1];
        }
    }
    kinds = PyTuple_New(nexts);
    if (kinds == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < nexts; i++) {
        PyObject *k = PyLong_FromSsize_t(exts[i]);
        if (k == NULL)
            goto done;
        PyTuple_SET_ITEM(kinds, i, k);
    }
    certs = PyList_New(0);
    if (certs == NULL)
        goto done;
    if (!(version >= 0x0304 || truncated)) {
        /* tls._certificates: the Certificate message after the hello, its certificate_list as far as it goes */
        int ckind, ctruncated;
        const uint8_t *cbody;
        Py_ssize_t cblen;
        got = message(stream, slen, 4 + blen, ended, partial, &ckind, &cbody, &cblen, &ctruncated);
        if (got < 0) {
            result = Py_NewRef(more);
            goto done;
        }
        if (got > 0 && ckind == CERTIFICATE && cblen >= 3) {
            Py_ssize_t total = (Py_ssize_t)cbody[0] << 16 | (Py_ssize_t)cbody[1] << 8 | cbody[2];
            Py_ssize_t avail = cblen - 3;
            reader chain = {cbody + 3, total < avail ? total : avail, 0, 0};
            while (chain.len - chain.pos >= 3) {
                const uint8_t *n3, *der;
                take(&chain, 3, &n3);
                if (!take(&chain, (Py_ssize_t)n3[0] << 16 | (Py_ssize_t)n3[1] << 8 | n3[2], &der))
                    break;
                PyObject *one = PyBytes_FromStringAndSize((const char *)der,
                                                          (Py_ssize_t)n3[0] << 16 | (Py_ssize_t)n3[1] << 8 | n3[2]);
                if (one == NULL || PyList_Append(certs, one) < 0) {
                    Py_XDECREF(one);
                    goto done;
                }
                Py_DECREF(one);
            }
        }
    }
    {
        PyObject *chain = PyList_AsTuple(certs);
        PyObject *call[4] = {PyLong_FromSsize_t(version), PyLong_FromSsize_t(suite), kinds, chain};
        if (call[0] != NULL && call[1] != NULL && chain != NULL)
            result = build(&server_slots, make, SERVER_FIELDS, call, 4);
        Py_XDECREF(call[0]);
        Py_XDECREF(call[1]);
        Py_XDECREF(chain);
    }
done:
    Py_XDECREF(kinds);
    Py_XDECREF(certs);
    PyMem_Free(exts);
    PyMem_Free(stream);
    PyBuffer_Release(&view);
    return result;
}

/* frame(data, skip): TlsShape.feed's framing of one side's bytes (its `_frame`). Returns (lengths of the
 * application-data records whose headers are whole, in order; the body bytes still to pass; the bytes of an
 * unfinished header, to join to the next chunk; whether a header that is not TLS's ended the stream). */
static PyObject *frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "frame(data, skip)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t skip = PyLong_AsSsize_t(args[1]);
    PyObject *lengths = NULL, *left = NULL, *rest = NULL, *out = NULL;
    if (skip < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "frame: a negative skip");
        goto done;
    }
    lengths = PyList_New(0);
    if (lengths == NULL)
        goto done;
    const uint8_t *d = view.buf;
    Py_ssize_t len = view.len, offset = 0, keep = len;
    int bad = 0;
    while (offset < len) {
        if (skip) {
            Py_ssize_t step = skip < len - offset ? skip : len - offset;
            skip -= step;
            offset += step;
            continue;
        }
        if (len - offset < 5) {
            keep = offset;
            break;
        }
        int kind = d[offset];
        Py_ssize_t length = (Py_ssize_t)d[offset + 3] << 8 | d[offset + 4];
        if ((kind != 20 && kind != 21 && kind != 22 && kind != 23) || d[offset + 1] != 3) {
            bad = 1;
            break;
        }
        skip = length;
        offset += 5;
        if (kind == 23) {
            PyObject *v = PyLong_FromSsize_t(length);
            if (v == NULL || PyList_Append(lengths, v) < 0) {
                Py_XDECREF(v);
                goto done;
            }
            Py_DECREF(v);
        }
    }
    rest = PyBytes_FromStringAndSize((const char *)d + keep, bad ? 0 : len - keep);
    left = PyLong_FromSsize_t(skip);
    if (rest != NULL && left != NULL)
        out = PyTuple_Pack(4, lengths, left, rest, bad ? Py_True : Py_False);
done:
    Py_XDECREF(lengths);
    Py_XDECREF(left);
    Py_XDECREF(rest);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"client_hello", (PyCFunction)(void (*)(void))client_hello, METH_FASTCALL,
     "tls._parse_client_hello: client_hello(prefix, partial, more, make)."},
    {"server_hello", (PyCFunction)(void (*)(void))server_hello, METH_FASTCALL,
     "tls._parse_server_hello: server_hello(prefix, partial, more, make)."},
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "TlsShape's record framing: frame(data, skip) -> (application lengths, skip, rest, bad)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tlsfast",
                                    "The front's per-connection TLS work (see tlsfast.py).", -1, methods};

PyMODINIT_FUNC PyInit__tlsfast(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "ABI", TLSFAST_ABI) < 0 ||
                      PyModule_AddStringConstant(m, "SOURCE", TLSFAST_SOURCE) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
