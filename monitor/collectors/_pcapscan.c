/* The pcap/pcapng collector's hot loop, in C (see monitor/accel.py).
 *
 * scan(buf, pos, n, pktno, ts, next_linger, big, scale, lt, ifaces, tcp, udp, closing,
 *      stats) -> (pos, pktno, ts)
 *
 * It reads the records of buf[pos:n] as FlowTable.scan does (classic pcap when `ifaces` is
 * None, with the file's `scale` and link type `lt`; pcapng Enhanced Packet Blocks
 * otherwise, `ifaces` holding (link type, scale, offset, snaplen) per interface; `big`
 * is the byte order) and handles, exactly as that loop (FlowTable._counted, or
 * FlowTable.packet and layers.Decoder) does, every packet whose payload it would not
 * read: a frame of any link type the Decoder reads (layers.LINKTYPES), through VLAN
 * stacks, MPLS label stacks and pseudowires, PPPoE, and tunnels nested to the Decoder's
 * depth bound (IP in IP, GRE, ERSPAN I/II/III, VXLAN, GENEVE, GTP-U; a frame in a tunnel
 * counts in `stats["tunnelled"]`, FlowTable.stats, and one nested deeper, a fragment or
 * anything the Decoder counts as damage is the Python code's) before the timers are due
 * (ts < next_linger), of a TCP segment or UDP datagram whose 5-tuple is in the table
 * (`tcp` / `udp`: key -> (Flow, client side)), and that is
 *   - a UDP datagram or TCP segment of a flow no longer inspected (flow.watch is False);
 *   - of an HTTP flow still inspected, a TCP segment neither SYN, FIN nor RST that is an
 *     ACK without payload or in order and wholly inside a body (FlowTable._http_skip),
 *     which is counted in the flow and in the request it belongs to
 *     (FlowTable._http_count), and stepped over;
 *   - an ACK without payload of another flow still inspected, only counted;
 *   - a SYN-ACK, FIN or RST (never a pure SYN) of a flow no longer inspected, or without
 *     captured payload of a flow still inspected that is not HTTP: counted, and its
 *     initial sequence number, FIN flags and closing time (`closing`:
 *     FlowTable.closing, id(flow) -> flow) set as FlowTable._tcp sets them.
 * Flows' slots are read and written by offset (their member descriptors' offsets, loaded
 * once for the type). It stops before the first record that is anything else
 * (incomplete, impossible, another block, another packet) and returns its offset, the
 * number of the last packet counted and its timestamp (the arguments as given when none
 * was): the Python loop reads that record. It is stricter than the Python code, never
 * looser, and the Python code stays the reference.
 *
 * Timestamps are computed with the same double arithmetic as the Python code (the product
 * is rounded on its own, never fused into the addition) so they are bit-identical.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#include "_accel.h"

/* flows.SCAN_VERSION: the interface of scan() (arguments, what it handles); FlowTable uses
 * a module built with another one not at all */
#define SCAN_VERSION 4
/* flows.MAX_FRAME: longest classic pcap record read (checked by the tests) */
#define MAX_FRAME (256 * 1024)
/* http1's HttpSide states (checked by the tests) */
#define HTTP_HEAD 0
#define HTTP_BODY 1
#define HTTP_CHUNK_SIZE 2
#define HTTP_CHUNK_DATA 3
#define HTTP_CLOSE 5
/* http1.MAX_BODY_EXCERPT: a response body shorter than this is still wanted (a refusal) */
#define MAX_BODY_EXCERPT 2048

static PyObject *s_watch, *s_last, *s_pk_out, *s_pk_in, *s_by_out, *s_by_in;
static PyObject *s_http, *s_exchanges, *s_cur_s, *s_awaiting, *s_ts_end;
static PyObject *s_cs, *s_ss, *s_client, *s_server, *s_data, *s_pending, *s_overflow;
static PyObject *s_next, *s_limit, *s_consumed, *s_state, *s_left, *s_body;
static PyObject *s_isn_c, *s_isn_s, *s_fin_c, *s_fin_s, *s_closed, *s_tunnelled;

/* a TCP segment's sequence number, flags and captured payload length (FlowTable._counted) */
struct seg {
    uint32_t seq;
    long n;
    int flags;
};

/* The slots of flows.Flow read and written per packet, by offset into the object (what
 * its member descriptors do, without looking them up per packet). Loaded for the type of
 * the first flow met and checked against the type of every flow. */
enum { F_WATCH, F_LAST, F_PK_OUT, F_PK_IN, F_BY_OUT, F_BY_IN, F_HTTP, F_ISN_C, F_ISN_S,
       F_FIN_C, F_FIN_S, F_CLOSED, F_NSLOTS };
static PyObject **slot_names[F_NSLOTS] = {
    &s_watch, &s_last, &s_pk_out, &s_pk_in, &s_by_out, &s_by_in, &s_http,
    &s_isn_c, &s_isn_s, &s_fin_c, &s_fin_s, &s_closed,
};
static PyTypeObject *flow_type; /* a strong reference, or NULL */
static Py_ssize_t flow_off[F_NSLOTS];

/* 1 when flows of type `t` have every slot above (offsets into flow_off); 0 not so */
static int
flow_slots(PyTypeObject *t)
{
    if (t == flow_type)
        return 1;
    Py_ssize_t off[F_NSLOTS];
    for (int i = 0; i < F_NSLOTS; i++) {
        PyObject *d = PyObject_GetAttr((PyObject *)t, *slot_names[i]);
        if (d == NULL) {
            PyErr_Clear();
            return 0;
        }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_common.d_type == t &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
                 !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
        if (ok)
            off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok)
            return 0;
    }
    memcpy(flow_off, off, sizeof(off));
    Py_INCREF(t);
    Py_XSETREF(flow_type, t);
    return 1;
}

/* the slot `i` of flow `f` (borrowed; NULL when unset) */
#define SLOT(f, i) (*(PyObject **)((char *)(f) + flow_off[i]))

/* set slot `i` of flow `f` to `v` (stolen; NULL: error, nothing changed) */
static int
slot_set(PyObject *f, int i, PyObject *v)
{
    if (v == NULL)
        return -1;
    PyObject *old = SLOT(f, i);
    SLOT(f, i) = v;
    Py_XDECREF(old);
    return 0;
}

/* slot `i` of `f` as a count (an exact int in [0, 2**62)) into *v: 1; 0 not so */
static int
slot_count(PyObject *f, int i, long long *v)
{
    PyObject *o = SLOT(f, i);
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
    int overflow = 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && *v >= 0 && *v < ((long long)1 << 62);
}

/* what FlowTable._http_skip changes for an in-order body segment, checked before any of
 * it is committed */
struct skip {
    PyObject *st, *side; /* the Stream and the HttpSide (new references) */
    long long next, consumed, left, state;
};

static inline uint32_t
rd32(const unsigned char *b, int big)
{
    if (big)
        return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
    return ((uint32_t)b[3] << 24) | ((uint32_t)b[2] << 16) | ((uint32_t)b[1] << 8) | b[0];
}

static inline long
rd16be(const unsigned char *b)
{
    return ((long)b[0] << 8) | b[1];
}

/* an exact int attribute of `f` that fits a long long, into *v: 1; 0: not so; -1: error */
static int
get_count(PyObject *f, PyObject *name, long long *v)
{
    PyObject *o = PyObject_GetAttr(f, name);
    if (o == NULL) {
        PyErr_Clear(); /* the Python loop meets the same and says so */
        return 0;
    }
    int ok = 0;
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        *v = PyLong_AsLongLongAndOverflow(o, &overflow);
        ok = !overflow && *v >= 0 && *v < ((long long)1 << 62);
    }
    Py_DECREF(o);
    return ok;
}

static int
set_count(PyObject *f, PyObject *name, long long v)
{
    PyObject *o = PyLong_FromLongLong(v);
    if (o == NULL)
        return -1;
    int r = PyObject_SetAttr(f, name, o);
    Py_DECREF(o);
    return r;
}

/* the request a segment of HTTP flow `h` counts in (FlowTable._http_count), into *x (a
 * new reference, or NULL when the flow has no request yet): 1; 0 not so */
static int
http_exchange(PyObject *h, int out, PyObject **x)
{
    *x = NULL;
    int ok = 0;
    PyObject *ex = NULL, *cur = NULL, *aw = NULL;
    if ((ex = PyObject_GetAttr(h, s_exchanges)) == NULL || !PyList_CheckExact(ex))
        goto done;
    Py_ssize_t n = PyList_GET_SIZE(ex);
    if (n == 0) {
        ok = 1;
        goto done;
    }
    if (out) {
        *x = PyList_GET_ITEM(ex, n - 1);
    }
    else {
        if ((cur = PyObject_GetAttr(h, s_cur_s)) == NULL)
            goto done;
        if (cur != Py_None) {
            *x = cur; /* an _Exchange (always true) */
        }
        else {
            if ((aw = PyObject_GetAttr(h, s_awaiting)) == NULL || !PyList_CheckExact(aw))
                goto done;
            *x = PyList_GET_SIZE(aw) ? PyList_GET_ITEM(aw, 0) : PyList_GET_ITEM(ex, n - 1);
        }
    }
    Py_INCREF(*x);
    ok = 1;
done:
    if (!ok)
        PyErr_Clear();
    Py_XDECREF(aw);
    Py_XDECREF(cur);
    Py_XDECREF(ex);
    return ok;
}

/* borrowed-free attribute read: a new reference, or NULL with no error set */
static PyObject *
attr(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        PyErr_Clear();
    return v;
}

/* FlowTable._http_skip's checks for `n` bytes at `seq` of an HTTP flow: 1 and *k filled
 * (to commit with skip_commit, or release with skip_release); 0 not so */
static int
skip_check(PyObject *http, PyObject *f, int out, uint32_t seq, long n, struct skip *k)
{
    k->st = k->side = NULL;
    PyObject *data = NULL, *pending = NULL, *overflow = NULL;
    long long limit;
    int ok = 0;
    if ((k->st = attr(f, out ? s_cs : s_ss)) == NULL || k->st == Py_None)
        goto done;
    if ((data = attr(k->st, s_data)) == NULL || !PyByteArray_CheckExact(data) ||
        PyByteArray_GET_SIZE(data) != 0)
        goto done;
    if ((pending = attr(k->st, s_pending)) == NULL || !PyDict_CheckExact(pending) ||
        PyDict_GET_SIZE(pending) != 0)
        goto done;
    if ((overflow = attr(k->st, s_overflow)) == NULL || overflow != Py_False)
        goto done;
    if (get_count(k->st, s_next, &k->next) <= 0 || k->next != (long long)seq ||
        get_count(k->st, s_limit, &limit) <= 0 || n > limit ||
        get_count(k->st, s_consumed, &k->consumed) <= 0)
        goto done;
    if ((k->side = attr(http, out ? s_client : s_server)) == NULL)
        goto done;
    PyObject *body = attr(k->side, s_body); /* HttpSide.skip: the bytes are wanted */
    if (body == NULL)
        goto done;
    int wanted = body != Py_None &&
                 (!PyByteArray_CheckExact(body) || PyByteArray_GET_SIZE(body) < MAX_BODY_EXCERPT);
    Py_DECREF(body);
    if (wanted)
        goto done;
    if (get_count(k->side, s_state, &k->state) <= 0 || get_count(k->side, s_left, &k->left) <= 0)
        goto done;
    if (k->state == HTTP_BODY || k->state == HTTP_CHUNK_DATA) {
        if (k->left < n)
            goto done;
        k->left -= n;
        if (k->left == 0)
            k->state = k->state == HTTP_BODY ? HTTP_HEAD : HTTP_CHUNK_SIZE;
    }
    else if (k->state != HTTP_CLOSE)
        goto done;
    k->next = (k->next + n) & 0xFFFFFFFF;
    k->consumed += n;
    ok = 1;
done:
    Py_XDECREF(overflow);
    Py_XDECREF(pending);
    Py_XDECREF(data);
    if (!ok) {
        Py_CLEAR(k->st);
        Py_CLEAR(k->side);
    }
    return ok;
}

static void
skip_release(struct skip *k)
{
    Py_CLEAR(k->st);
    Py_CLEAR(k->side);
}

static int
skip_commit(struct skip *k)
{
    return set_count(k->st, s_next, k->next) < 0 || set_count(k->st, s_consumed, k->consumed) < 0 ||
                   set_count(k->side, s_left, k->left) < 0 ||
                   set_count(k->side, s_state, k->state) < 0
               ? -1
               : 0;
}

/* what FlowTable._tcp does with a segment of flow `f` (side `out`) carrying SYN (not a
 * pure SYN: a SYN-ACK), FIN or RST, when it reads no payload (the flow is no longer
 * inspected, or the segment has no captured payload and the flow is not HTTP): the
 * initial sequence number, the FIN flags, the closing time. Checked into *c, committed
 * by ctl_commit. 1 checked; 0 not such a segment (nothing changed) */
struct ctl {
    int isn, fin_c, fin_s, close;
};

static int
ctl_check(PyObject *f, int out, int watched, int inspected, const struct seg *s, struct ctl *c)
{
    if ((s->flags & 0x12) == 0x02) /* a SYN: a new connection perhaps, the general path */
        return 0;
    if (watched && (!inspected || s->n > 0 || SLOT(f, F_HTTP) != Py_None))
        return 0;
    PyObject *fc = SLOT(f, F_FIN_C), *fs = SLOT(f, F_FIN_S), *closed = SLOT(f, F_CLOSED);
    if ((fc != Py_True && fc != Py_False) || (fs != Py_True && fs != Py_False) || closed == NULL)
        return 0;
    c->isn = (s->flags & 0x02) != 0;
    c->fin_c = fc == Py_True;
    c->fin_s = fs == Py_True;
    if (s->flags & 0x04)
        c->fin_c = c->fin_s = 1;
    else if (s->flags & 0x01) {
        if (out)
            c->fin_c = 1;
        else
            c->fin_s = 1;
    }
    c->close = c->fin_c && c->fin_s && closed == Py_None;
    return 1;
}

static int
ctl_commit(PyObject *f, int out, uint32_t seq, double ts, const struct ctl *c, PyObject *closing)
{
    if (c->isn && slot_set(f, out ? F_ISN_C : F_ISN_S, PyLong_FromUnsignedLong(seq)) < 0)
        return -1;
    Py_INCREF(c->fin_c ? Py_True : Py_False);
    slot_set(f, F_FIN_C, c->fin_c ? Py_True : Py_False);
    Py_INCREF(c->fin_s ? Py_True : Py_False);
    slot_set(f, F_FIN_S, c->fin_s ? Py_True : Py_False);
    if (c->close) { /* FlowTable.closing[id(f)] = f */
        if (slot_set(f, F_CLOSED, PyFloat_FromDouble(ts)) < 0)
            return -1;
        PyObject *id = PyLong_FromVoidPtr(f);
        if (id == NULL)
            return -1;
        int err = PyDict_SetItem(closing, id, f);
        Py_DECREF(id);
        if (err < 0)
            return -1;
    }
    return 0;
}

/* the table entry of key b[0:len] counts one packet of `plen` payload bytes at `ts`
 * (`s`: the TCP segment, NULL for UDP): 1 done; 0 not a packet the fast path only counts,
 * 2 no such entry (nothing changed either way); -1 error */
static int
count(PyObject *table, const unsigned char *b, Py_ssize_t len, long plen, double ts,
      const struct seg *s, PyObject *closing)
{
    PyObject *key = PyBytes_FromStringAndSize((const char *)b, len);
    if (key == NULL)
        return -1;
    PyObject *ent = PyDict_GetItemWithError(table, key); /* borrowed */
    Py_DECREF(key);
    if (ent == NULL)
        return PyErr_Occurred() ? -1 : 2;
    if (!PyTuple_CheckExact(ent) || PyTuple_GET_SIZE(ent) != 2)
        return 0;
    PyObject *side = PyTuple_GET_ITEM(ent, 1);
    if (side != Py_True && side != Py_False)
        return 0;
    int out = side == Py_True;
    PyObject *f = PyTuple_GET_ITEM(ent, 0);
    if (!flow_slots(Py_TYPE(f)))
        return 0;
    Py_INCREF(f); /* the entry is the table's: hold the flow while it is updated */
    int r = 0;
    PyObject *x = NULL; /* the HTTP request a segment of an inspected flow counts in */
    PyObject *http = NULL;
    struct skip k = {NULL, NULL, 0, 0, 0, 0};
    struct ctl c = {0, 0, 0, 0};
    int skipping = 0, ctl = s != NULL && (s->flags & 7);
    PyObject *watch = SLOT(f, F_WATCH);
    if (watch == NULL)
        goto done;
    int watched = watch != Py_False, inspected = watch == Py_True;
    if (ctl) {
        if (!ctl_check(f, out, watched, inspected, s, &c))
            goto done;
    }
    else if (watched) { /* only TCP segments of HTTP flows (ACKs of any flow) */
        if (s == NULL || !inspected || (plen && s->n <= 0))
            goto done;
        PyObject *h = SLOT(f, F_HTTP);
        if (h == NULL || (plen && h == Py_None))
            goto done;
        Py_INCREF(h);
        http = h;
        if (plen) {
            if (!skip_check(http, f, out, s->seq, s->n, &k))
                goto done;
            skipping = 1;
        }
        if (http != Py_None && !http_exchange(http, out, &x))
            goto done;
    }
    PyObject *pk_name = out ? s_pk_out : s_pk_in;
    PyObject *by_name = out ? s_by_out : s_by_in;
    long long pk, by, xpk = 0;
    double ts_end = 0.0;
    if (!slot_count(f, out ? F_PK_OUT : F_PK_IN, &pk) || !slot_count(f, out ? F_BY_OUT : F_BY_IN, &by))
        goto done;
    if (x != NULL) {
        if (get_count(x, pk_name, &xpk) <= 0)
            goto done;
        PyObject *te = PyObject_GetAttr(x, s_ts_end);
        if (te == NULL) {
            PyErr_Clear();
            goto done;
        }
        int isfloat = PyFloat_CheckExact(te);
        ts_end = isfloat ? PyFloat_AS_DOUBLE(te) : 0.0;
        Py_DECREF(te);
        if (!isfloat)
            goto done;
    }
    /* checked: commit (pk, by < 2**62 and plen < 2**17: no overflow) */
    long long xby = 0;
    if (x != NULL && get_count(x, by_name, &xby) <= 0)
        goto done;
    r = -1;
    if (slot_set(f, out ? F_PK_OUT : F_PK_IN, PyLong_FromLongLong(pk + 1)) < 0 ||
        slot_set(f, out ? F_BY_OUT : F_BY_IN, PyLong_FromLongLong(by + plen)) < 0 ||
        slot_set(f, F_LAST, PyFloat_FromDouble(ts)) < 0)
        goto done;
    if (ctl && ctl_commit(f, out, s->seq, ts, &c, closing) < 0)
        goto done;
    if (skipping && skip_commit(&k) < 0)
        goto done;
    if (x != NULL) {
        if (set_count(x, pk_name, xpk + 1) < 0 || (plen && set_count(x, by_name, xby + plen) < 0))
            goto done;
        if (ts > ts_end) {
            PyObject *t = PyFloat_FromDouble(ts);
            if (t == NULL)
                goto done;
            int err = PyObject_SetAttr(x, s_ts_end, t);
            Py_DECREF(t);
            if (err < 0)
                goto done;
        }
    }
    r = 1;
done:
    skip_release(&k);
    Py_XDECREF(http);
    Py_XDECREF(x);
    Py_DECREF(f);
    return r;
}

/* layers.MAX_DEPTH, MAX_LABELS (checked by the tests) */
#define MAX_DEPTH 8
#define MAX_LABELS 16

/* What decode() found, as layers.Decoder.frame finds it: the TCP or UDP segment at b + l4
 * (offsets from b), the IP payload's declared end and the end of its bytes present, the
 * innermost addresses; `tunnelled` when an encapsulation (not MPLS pseudowire) was
 * entered (Decoder._enter: counted in stats["tunnelled"]) */
struct dec {
    const unsigned char *b;
    const unsigned char *addrs;
    Py_ssize_t l4, iend, dend;
    int proto, alen, tunnelled;
};

/* The twins of layers.Decoder's methods: each returns 1 when a TCP/UDP segment was found
 * (into *d), 0 for whatever the Decoder counts or drops (short, not IP, a fragment, the
 * depth bound...) or reads in ways not mirrored here: the Python code then reads it.
 * Every read is inside [off, end), which is inside the buffer. */
static int d_ether_type(struct dec *d, long et, Py_ssize_t off, Py_ssize_t end, int depth);
static int d_ip4(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth);
static int d_ip6(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth);

static inline int
vlan(long et)
{
    return et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x9200;
}

/* Decoder._enter: one encapsulation more, unless too deep */
static inline int
d_enter(struct dec *d, int depth)
{
    if (depth >= MAX_DEPTH)
        return 0;
    d->tunnelled = 1;
    return 1;
}

static int
d_ethernet(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth)
{
    if (end - off < 14)
        return 0;
    return d_ether_type(d, rd16be(d->b + off + 12), off + 14, end, depth);
}

static int
d_raw_ip(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth)
{
    if (end <= off)
        return 0;
    int v = d->b[off] >> 4;
    return v == 4 ? d_ip4(d, off, end, depth) : v == 6 ? d_ip6(d, off, end, depth) : 0;
}

static int
d_ppp(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth)
{
    if (end - off < 2)
        return 0;
    long ppp = rd16be(d->b + off);
    return ppp == 0x0021   ? d_ip4(d, off + 2, end, depth)
           : ppp == 0x0057 ? d_ip6(d, off + 2, end, depth)
                           : 0;
}

/* Decoder._mpls: a label stack, then IP or (pseudowire control word) Ethernet */
static int
d_mpls(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth)
{
    int bottom = 0;
    for (int i = 0; i < MAX_LABELS && !bottom; i++) {
        if (end - off < 4)
            return 0;
        bottom = d->b[off + 2] & 1;
        off += 4;
    }
    if (!bottom || end <= off)
        return 0;
    if (d->b[off] >> 4 == 0)
        return depth < MAX_DEPTH ? d_ethernet(d, off + 4, end, depth + 1) : 0;
    return d_raw_ip(d, off, end, depth);
}

static int
d_ether_type(struct dec *d, long et, Py_ssize_t off, Py_ssize_t end, int depth)
{
    const unsigned char *b = d->b;
    while (vlan(et)) {
        if (end - off < 4)
            return 0;
        et = rd16be(b + off + 2);
        off += 4;
    }
    switch (et) {
    case 0x0800:
        return d_ip4(d, off, end, depth);
    case 0x86DD:
        return d_ip6(d, off, end, depth);
    case 0x8847:
    case 0x8848:
        return d_mpls(d, off, end, depth);
    case 0x8864: /* a PPPoE session */
        if (end - off < 6 || b[off] != 0x11 || b[off + 1] != 0)
            return 0;
        return d_ppp(d, off + 6, end, depth);
    }
    return 0;
}

/* Decoder._gre: GRE with checksum, key, sequence number; ERSPAN I/II/III, Ethernet, or
 * the EtherType inside */
static int
d_gre(struct dec *d, Py_ssize_t p, Py_ssize_t end, int depth)
{
    const unsigned char *b = d->b;
    if (end - p < 4)
        return 0;
    long flags = rd16be(b + p), et = rd16be(b + p + 2), seq = flags & 0x1000;
    if (flags & 7)
        return 0;
    p += 4 + ((flags & 0x8000) >> 13) + ((flags & 0x2000) >> 11) + (seq >> 10);
    int bridged = et == 0x6558;
    if (et == 0x88BE) { /* ERSPAN II has a sequence number and an 8-byte header; I neither */
        p += seq ? 8 : 0;
        bridged = 1;
    }
    else if (et == 0x22EB) {
        if (end - p < 12)
            return 0;
        p += b[p + 11] & 1 ? 20 : 12;
        bridged = 1;
    }
    if (!d_enter(d, depth))
        return 0;
    return bridged ? d_ethernet(d, p, end, depth + 1) : d_ether_type(d, et, p, end, depth + 1);
}

/* Decoder._gtpu: a G-PDU, its optional fields and extension headers, then IP */
static int
d_gtpu(struct dec *d, Py_ssize_t p, Py_ssize_t end, int depth)
{
    const unsigned char *b = d->b;
    if (end - p < 8)
        return 0;
    int flags = b[p];
    if (flags >> 5 != 1 || b[p + 1] != 0xFF)
        return 0;
    Py_ssize_t q = p + 8;
    if (flags & 7) {
        if (end - q < 4)
            return 0;
        int nxt = flags & 4 ? b[q + 3] : 0;
        q += 4;
        while (nxt) {
            if (end - q < 4 || !b[q])
                return 0;
            q += b[q] << 2;
            if (q > end)
                return 0; /* (short, whatever the byte after it says) */
            nxt = b[q - 1];
        }
    }
    return d_raw_ip(d, q, end, depth);
}

/* the tail of Decoder._ip4 / _ip6 and Decoder._inner: the segment, or what the datagram
 * of protocol `proto` carries at b[l4:dend] */
static int
d_datagram(struct dec *d, int proto, const unsigned char *addrs, int alen, Py_ssize_t l4,
           Py_ssize_t iend, Py_ssize_t dend, int depth)
{
    const unsigned char *b = d->b;
    long port = dend - l4 >= 4 ? rd16be(b + l4 + 2) : -1; /* layers.TUNNEL_PORTS */
    int tunnel_port = port == 4789 || port == 6081 || port == 2152;
    if (proto == 6 || (proto == 17 && !tunnel_port)) {
        d->proto = proto;
        d->addrs = addrs;
        d->alen = alen;
        d->l4 = l4;
        d->iend = iend;
        d->dend = dend;
        return 1;
    }
    if (proto == 4 || proto == 41) {
        if (!d_enter(d, depth))
            return 0;
        return proto == 4 ? d_ip4(d, l4, dend, depth + 1) : d_ip6(d, l4, dend, depth + 1);
    }
    if (proto == 47)
        return d_gre(d, l4, dend, depth);
    if (proto != 17 || dend - l4 < 8 || !d_enter(d, depth))
        return 0;
    Py_ssize_t p = l4 + 8;
    if (port == 2152)
        return d_gtpu(d, p, dend, depth + 1);
    if (dend - p < 8)
        return 0;
    if (port == 4789)
        return b[p] & 0x08 ? d_ethernet(d, p + 8, dend, depth + 1) : 0;
    if (b[p] >> 6) /* GENEVE */
        return 0;
    long et = rd16be(b + p + 2);
    p += 8 + ((b[p] & 0x3F) << 2);
    return et == 0x6558 ? d_ethernet(d, p, dend, depth + 1) : d_ether_type(d, et, p, dend, depth + 1);
}

static int
d_ip4(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth)
{
    const unsigned char *b = d->b;
    if (end - off < 20 || b[off] >> 4 != 4)
        return 0;
    long ihl = (b[off] & 15) << 2, tot = rd16be(b + off + 2);
    if (ihl < 20 || rd16be(b + off + 6) & 0x3FFF) /* a fragment: reassembled in Python */
        return 0;
    Py_ssize_t iend = tot >= ihl ? off + tot : end; /* 0 with TSO: the frame */
    return d_datagram(d, b[off + 9], b + off + 12, 8, off + ihl, iend, iend < end ? iend : end,
                      depth);
}

static int
d_ip6(struct dec *d, Py_ssize_t off, Py_ssize_t end, int depth)
{
    const unsigned char *b = d->b;
    if (end - off < 40)
        return 0;
    long plen = rd16be(b + off + 4);
    int proto = b[off + 6];
    Py_ssize_t l4 = off + 40, iend = plen ? l4 + plen : end, dend = iend < end ? iend : end;
    /* extension headers (layers._V6_EXT, and 51); a fragment (44) is Python's */
    while (proto == 0 || proto == 43 || proto == 60 || proto == 135 || proto == 139 ||
           proto == 140 || proto == 253 || proto == 254 || proto == 44 || proto == 51) {
        if (dend - l4 < 8 || proto == 44)
            return 0;
        int nxt = b[l4];
        l4 += proto == 51 ? (b[l4 + 1] + 2) << 2 : (b[l4 + 1] + 1) << 3;
        proto = nxt;
    }
    return d_datagram(d, proto, b + off + 8, 32, l4, iend, dend, depth);
}

/* Decoder.frame: frame b[off:end] of link type `lt` */
static int
decode(struct dec *d, long lt, Py_ssize_t off, Py_ssize_t end)
{
    const unsigned char *b = d->b;
    d->tunnelled = 0;
    switch (lt) {
    case 1:
        return d_ethernet(d, off, end, 0);
    case 113: /* Linux cooked */
        return end - off >= 16 ? d_ether_type(d, rd16be(b + off + 14), off + 16, end, 0) : 0;
    case 276: /* Linux cooked v2 */
        return end - off >= 20 ? d_ether_type(d, rd16be(b + off), off + 20, end, 0) : 0;
    case 12:
    case 14:
    case 101:
    case 228:
    case 229:
        return d_raw_ip(d, off, end, 0);
    case 9: /* PPP, with or without the HDLC address/control bytes */
        if (end - off >= 2 && b[off] == 0xFF && b[off + 1] == 0x03)
            off += 2;
        return d_ppp(d, off, end, 0);
    case 0:
    case 108: { /* BSD loopback (host order, or written on a big-endian host), OpenBSD's */
        if (end - off < 4)
            return 0;
        uint32_t fam = rd32(b + off, lt == 108);
        if (lt == 0 && fam > 0xFFFF)
            fam = rd32(b + off, 1);
        if (fam == 2)
            return d_ip4(d, off + 4, end, 0);
        if (fam == 10 || fam == 24 || fam == 28 || fam == 30)
            return d_ip6(d, off + 4, end, 0);
        return 0;
    }
    }
    return 0;
}

/* the link types decode() reads (layers.LINKTYPES) */
static int
linktype_read(long lt)
{
    return lt == 0 || lt == 1 || lt == 9 || lt == 12 || lt == 14 || lt == 101 || lt == 108 ||
           lt == 113 || lt == 228 || lt == 229 || lt == 276;
}

/* FlowTable.packet for frame b[off:end] of link type `lt` at `ts`, for the packets of
 * flows in the table the fast path only counts (see count()): 1 done; 0 not so (nothing
 * changed); -1 error. A frame in a tunnel counts in stats["tunnelled"] as
 * Decoder._enter counts it. */
static int
frame(const unsigned char *b, long lt, Py_ssize_t off, Py_ssize_t end, double ts,
      PyObject *tcp, PyObject *udp, PyObject *closing, PyObject *stats)
{
    struct dec d;
    d.b = b;
    if (!decode(&d, lt, off, end))
        return 0;
    Py_ssize_t l4 = d.l4;
    long long tunnelled = 0;
    if (d.tunnelled) {
        PyObject *n = PyDict_GetItemWithError(stats, s_tunnelled); /* borrowed */
        if (n == NULL)
            return PyErr_Occurred() ? -1 : 0;
        int overflow = 0;
        tunnelled = PyLong_CheckExact(n) ? PyLong_AsLongLongAndOverflow(n, &overflow) : -1;
        if (overflow || tunnelled < 0 || tunnelled >= ((long long)1 << 62))
            return 0;
    }
    unsigned char key[36]; /* the 5-tuple key: addresses, ports */
    memcpy(key, d.addrs, d.alen);
    int r;
    if (d.proto == 6) {
        if (d.dend - l4 < 20)
            return 0;
        long hl = (b[l4 + 12] >> 4) << 2;
        Py_ssize_t plen = d.iend - l4 - hl;
        if (hl < 20 || plen < 0)
            return 0;
        memcpy(key + d.alen, b + l4, 4);
        struct seg s = {rd32(b + l4 + 4, 1), (long)(d.dend - l4 - hl), b[l4 + 13]};
        r = count(tcp, key, d.alen + 4, (long)plen, ts, &s, closing);
    }
    else {
        if (d.dend - l4 < 8 || d.iend - l4 < 8)
            return 0;
        memcpy(key + d.alen, b + l4, 4);
        r = count(udp, key, d.alen + 4, (long)(d.iend - l4 - 8), ts, NULL, closing);
    }
    if (r != 1 || !d.tunnelled)
        return r == 2 ? 0 : r;
    PyObject *nv = PyLong_FromLongLong(tunnelled + 1);
    if (nv == NULL)
        return -1;
    int err = PyDict_SetItem(stats, s_tunnelled, nv);
    Py_DECREF(nv);
    return err < 0 ? -1 : 1;
}

/* an interface's (link type, scale, offset, snaplen): 1 when a link type read, with float
 * scale and offset (into *lt, *sc, *off); 0 otherwise */
static int
iface_of(PyObject *ifaces, uint32_t i, long *lt, double *sc, double *off)
{
    if ((uint64_t)i >= (uint64_t)PyList_GET_SIZE(ifaces))
        return 0;
    PyObject *t = PyList_GET_ITEM(ifaces, (Py_ssize_t)i);
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 4)
        return 0;
    PyObject *l = PyTuple_GET_ITEM(t, 0);
    PyObject *s = PyTuple_GET_ITEM(t, 1);
    PyObject *o = PyTuple_GET_ITEM(t, 2);
    if (!PyLong_CheckExact(l) || !PyFloat_CheckExact(s) || !PyFloat_CheckExact(o))
        return 0;
    int overflow = 0;
    *lt = PyLong_AsLongAndOverflow(l, &overflow);
    if (overflow || !linktype_read(*lt))
        return 0;
    *sc = PyFloat_AS_DOUBLE(s);
    *off = PyFloat_AS_DOUBLE(o);
    return 1;
}

static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 14 arguments");
        return NULL;
    }
    PyObject *bufo = args[0], *ifaces = args[9], *tcp = args[10], *udp = args[11];
    PyObject *closing = args[12], *stats = args[13];
    int ng = ifaces != Py_None;
    if (!PyBytes_CheckExact(bufo) || !PyLong_CheckExact(args[1]) ||
        !PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[3]) ||
        !PyFloat_CheckExact(args[5]) || !PyFloat_CheckExact(args[7]) ||
        !PyLong_CheckExact(args[8]) || !PyDict_CheckExact(tcp) || !PyDict_CheckExact(udp) || !PyDict_CheckExact(closing) || !PyDict_CheckExact(stats) ||
        (ng && !PyList_CheckExact(ifaces)))
        goto unchanged;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    long long pktno = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        goto unchanged;
    }
    int big = PyObject_IsTrue(args[6]);
    if (big < 0)
        return NULL;
    double next_linger = PyFloat_AS_DOUBLE(args[5]);
    double scale = PyFloat_AS_DOUBLE(args[7]);
    int overflow = 0;
    long lt = PyLong_AsLongAndOverflow(args[8], &overflow);
    if (pos < 0 || n > PyBytes_GET_SIZE(bufo) || pktno < 0 || pktno >= LLONG_MAX - n)
        goto unchanged;
    if (!ng && (overflow || !linktype_read(lt)))
        goto unchanged; /* a link type not read here: nothing for the fast path */

    Py_INCREF(bufo);
    Py_INCREF(tcp);
    Py_INCREF(udp);
    Py_INCREF(closing);
    Py_INCREF(stats);
    Py_XINCREF(ifaces);
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(bufo);
    long long first = pktno;
    double ts = 0.0;
    int64_t cur = -1; /* pcapng: the interface whose scale and offset are loaded */
    double sc = 0.0, tsoff = 0.0;
    int err = 0;
    for (;;) {
        Py_ssize_t p, next;
        int64_t incl;
        double t;
        volatile double prod; /* rounded alone, as in Python: never fused with the sum */
        if (ng) {
            if (pos > n - 32)
                break;
            const unsigned char *r = b + pos;
            uint32_t btype = rd32(r, big), blen = rd32(r + 4, big), iface = rd32(r + 8, big);
            incl = rd32(r + 20, big);
            if (btype != 6 || blen & 3 || incl > (int64_t)blen - 32 || (int64_t)blen > n - pos)
                break;
            if ((int64_t)iface != cur) {
                if (!iface_of(ifaces, iface, &lt, &sc, &tsoff))
                    break;
                cur = iface;
            }
            uint64_t tsraw = ((uint64_t)rd32(r + 12, big) << 32) | rd32(r + 16, big);
            prod = (double)tsraw * sc;
            t = prod + tsoff;
            p = pos + 28;
            next = pos + (Py_ssize_t)blen;
        }
        else {
            if (pos > n - 16)
                break;
            const unsigned char *r = b + pos;
            incl = rd32(r + 8, big);
            if (incl > MAX_FRAME || incl > n - pos - 16)
                break;
            prod = (double)rd32(r + 4, big) * scale;
            t = (double)rd32(r, big) + prod;
            p = pos + 16;
            next = p + (Py_ssize_t)incl;
        }
        if (!(t < next_linger))
            break;
        int r = frame(b, lt, p, p + (Py_ssize_t)incl, t, tcp, udp, closing, stats);
        if (r < 0) {
            err = 1;
            break;
        }
        if (r == 0)
            break;
        pos = next;
        pktno++;
        ts = t;
    }
    Py_DECREF(bufo);
    Py_DECREF(tcp);
    Py_DECREF(udp);
    Py_DECREF(closing);
    Py_DECREF(stats);
    Py_XDECREF(ifaces);
    if (err)
        return NULL;
    if (pktno == first)
        goto unchanged;
    return Py_BuildValue("nLd", pos, pktno, ts);
unchanged:
    return PyTuple_Pack(3, args[1], args[3], args[4]);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, pos, n, pktno, ts, next_linger, big, scale, lt, ifaces, tcp, udp, closing, "
     "stats) -> (pos, pktno, ts): count the run of packets FlowTable.scan would only count."},
    {NULL, NULL, 0, NULL},
};

ACCEL_MODULE("_pcapscan", "The pcap collector's hot loop (FlowTable.scan's fast path) in C.");

PyMODINIT_FUNC
PyInit__pcapscan(void)
{
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_watch, "watch"}, {&s_last, "last"},   {&s_pk_out, "pk_out"},
        {&s_pk_in, "pk_in"}, {&s_by_out, "by_out"}, {&s_by_in, "by_in"},
        {&s_http, "http"}, {&s_exchanges, "exchanges"}, {&s_cur_s, "cur_s"},
        {&s_awaiting, "awaiting"}, {&s_ts_end, "ts_end"}, {&s_cs, "cs"}, {&s_ss, "ss"},
        {&s_client, "client"}, {&s_server, "server"}, {&s_data, "data"},
        {&s_pending, "pending"}, {&s_overflow, "overflow"}, {&s_next, "next"},
        {&s_limit, "limit"}, {&s_consumed, "consumed"}, {&s_state, "state"}, {&s_left, "left"},
        {&s_body, "body"}, {&s_isn_c, "isn_c"}, {&s_isn_s, "isn_s"}, {&s_fin_c, "fin_c"},
        {&s_fin_s, "fin_s"}, {&s_closed, "closed"}, {&s_tunnelled, "tunnelled"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "SCAN_VERSION", SCAN_VERSION) < 0 ||
                      PyModule_AddIntConstant(m, "MAX_FRAME", MAX_FRAME) < 0 ||
                      PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0 ||
                      PyModule_AddIntConstant(m, "MAX_LABELS", MAX_LABELS) < 0 ||
                      PyModule_AddIntConstant(m, "MAX_BODY_EXCERPT", MAX_BODY_EXCERPT) < 0 ||
                      PyModule_AddIntConstant(m, "HTTP_HEAD", HTTP_HEAD) < 0 ||
                      PyModule_AddIntConstant(m, "HTTP_BODY", HTTP_BODY) < 0 ||
                      PyModule_AddIntConstant(m, "HTTP_CHUNK_SIZE", HTTP_CHUNK_SIZE) < 0 ||
                      PyModule_AddIntConstant(m, "HTTP_CHUNK_DATA", HTTP_CHUNK_DATA) < 0 ||
                      PyModule_AddIntConstant(m, "HTTP_CLOSE", HTTP_CLOSE) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
