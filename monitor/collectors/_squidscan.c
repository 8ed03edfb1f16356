/* The Squid native collector's pre-pass, in C (see monitor/accel.py).
 *
 * native_chunk(chunk, clean, max_line, rejects, markers=(), ranges=None, maker=None,
 *              verdicts=None, connects=rejects) -> (records, todo, lines)
 *
 * `chunk` holds whole lines, each ending in a newline (monitor.collectors.base.iter_chunks),
 * and after the last newline perhaps the start of a line that the next chunk holds, which
 * is not read. A line is what precedes its newline, without the carriage returns ending it. For each
 * line it does what the first steps of SquidCollector._parse_native do when a host filter
 * is set. A line of exactly ten whitespace-separated fields whose fields are well formed
 * and whose target (the CONNECT host:port, or a URL's scheme://authority) the filter has
 * already judged (in `connects` for a CONNECT, `rejects` for the others: one text may be
 * read as either, differently) is
 *   - rejected (rejects[target] is True): a record that is counted and dropped, unless it
 *     is a URL whose path holds one of `markers` (byte strings an LLM API path holds), or
 *     its %Sh/%<a field names an address that may lie in `ranges` (a provider's published
 *     ingress ranges: fronted traffic, whatever the name);
 *   - kept (rejects[target] is False): split into its fields, the tuple
 *     (index, ts, elapsed, client, code/status, size, method, target, user, peer, id)
 *     with ts a float, elapsed and size ints, id the line's record id (a str: what
 *     monitor.ids.record_id makes of the line) and the rest bytes, appended to `todo`;
 *     with `maker`, a CONNECT whose values are all in the collector's caches becomes its
 *     Observation right here (counted in `records`, see observation_of); when the maker
 *     names known line keys (monitor.observation.Known), such a CONNECT comes as the pair
 *     (Observation, line key), or, when its key is known, with no Observation, in a run of
 *     consecutive ones: the pair (their entries, their per-request values and ids packed,
 *     a KnownRecord of collectors/_accel.h each; see known_of).
 * Every other line (any other shape, longer than max_line, a target not yet in `rejects`,
 * a timestamp that is not plain digits[.digits] below 1e10, a marker in a rejected URL, a
 * peer address in `ranges` or one that only Python can read) goes to `todo` as (index,
 * line), for the Python loop to read. `ranges` is (v4, v6): bytes of sorted, disjoint
 * [first, last] address pairs, big-endian, 4 and 16 bytes per address. It is stricter than the
 * Python code, never looser; `todo` keeps the order of the lines; `clean` says the chunk
 * holds no NUL byte; `lines` is the number of lines read (the newlines of the chunk, up to its
 * last). `verdicts` (a Verdicts) holds what `rejects` held for the targets seen so far: a
 * rejected line whose target it holds is only read, no object is made for it; it also
 * remembers the line keys it made, so that a known one is not made again (see known_of).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <float.h>
#include <math.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_accel.h"

#define FIELDS 10


/* The masks of the 64 bytes p[0:64] (bit k for p[k]): bytes.split()'s separators (space and
 * \t \n \v \f \r: Py_ISSPACE) as the result, the newlines in *nl and, with `nuls`, the NUL
 * bytes in *nul. One pass over the bytes finds a line's end, its fields and its NULs. */
#if defined(__SSE2__) && !defined(ACCEL_PORTABLE) /* -DACCEL_PORTABLE: the loop below */
#include <emmintrin.h>

static inline __attribute__((always_inline)) uint64_t
scan64(const char *p, uint64_t *nl, uint64_t *nul, int nuls)
{
    const __m128i space = _mm_set1_epi8(' '), tab = _mm_set1_epi8('\t'), four = _mm_set1_epi8(4);
    const __m128i newline = _mm_set1_epi8('\n'), zero = _mm_setzero_si128();
    uint64_t m = 0, l = 0, z = 0;
    for (int k = 0; k < 4; k++) {
        __m128i b = _mm_loadu_si128((const __m128i *)(p + 16 * k));
        /* ' ', or \t..\r: b - '\t' at most 4, unsigned */
        __m128i ctrl = _mm_cmpeq_epi8(_mm_subs_epu8(_mm_sub_epi8(b, tab), four), zero);
        __m128i sep = _mm_or_si128(_mm_cmpeq_epi8(b, space), ctrl);
        m |= (uint64_t)(uint16_t)_mm_movemask_epi8(sep) << (16 * k);
        l |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(b, newline)) << (16 * k);
        if (nuls)
            z |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(b, zero)) << (16 * k);
    }
    *nl = l;
    *nul = z;
    return m;
}
#else
static const unsigned char SPACE[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1, [' '] = 1,
};

static inline uint64_t
scan64(const char *p, uint64_t *nl, uint64_t *nul, int nuls)
{
    uint64_t m = 0, l = 0, z = 0;
    for (int k = 0; k < 64; k++) {
        unsigned char c = (unsigned char)p[k];
        m |= (uint64_t)SPACE[c] << k;
        l |= (uint64_t)(c == '\n') << k;
        z |= (uint64_t)(c == 0) << k;
    }
    *nl = l;
    *nul = nuls ? z : 0;
    return m;
}
#endif

/* the masks of a block (see scan64), the NULs only when the chunk may hold one */
static inline uint64_t
scan_block(const char *p, uint64_t *nl, uint64_t *nul, int clean)
{
    return clean ? scan64(p, nl, nul, 0) : scan64(p, nl, nul, 1);
}

/* Digits and ASCII eight bytes at a time, in the fields a line starts with (ts, elapsed,
 * code/status, size): five more fields and their separators follow them in the line, so a
 * word read from inside one of them never reaches past the line. The words are read
 * little-endian (byte k of s is bits 8k..8k+7), which the carries of nondigits() need:
 * they only run towards later bytes. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "_squidscan.c reads words little-endian"
#endif
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* s[0:8] as a word */
static inline uint64_t
word_at(const char *s)
{
    uint64_t w;
    memcpy(&w, s, 8);
    return w;
}

/* the bits of a word's first m bytes (m >= 1) */
static inline uint64_t
first_bytes(Py_ssize_t m)
{
    return m >= 8 ? ~0ULL : (1ULL << (8 * m)) - 1;
}

/* the high bit of each byte of w that is no ASCII digit; the lowest such byte is exact,
 * those after it may be marked too (a carry) */
static inline uint64_t
nondigits(uint64_t w)
{
    uint64_t x = w ^ (ONES * '0'); /* a digit: 0..9 */
    return ((x + ONES * 0x76) | x) & HIGHS; /* 0x76 + x reaches 0x80 from x = 10 */
}

/* how many ASCII digits s[0:n] starts with; reads whole words (past n, up to s[n + 7]) */
static inline Py_ssize_t
leading_digits(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i += 8) {
        uint64_t bad = nondigits(word_at(s + i)) & first_bytes(n - i);
        if (bad)
            return i + (__builtin_ctzll(bad) >> 3);
    }
    return n;
}

/* s[0:n] is 1+ ASCII digits: the words before the last, then its last eight bytes (a word
 * wholly digits has no carry) */
static inline int
all_digits(const char *s, Py_ssize_t n)
{
    if (n <= 8)
        return n > 0 && !(nondigits(word_at(s)) & first_bytes(n));
    uint64_t bad = nondigits(word_at(s + n - 8));
    for (Py_ssize_t i = 0; i + 8 < n; i += 8)
        bad |= nondigits(word_at(s + i));
    return !bad;
}

/* %ts.%03tu: 1-10 digits, optionally '.' and 1+ digits (so 0 <= ts < 1e10) */
static int
plain_ts(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = leading_digits(s, n);
    if (i == 0 || i > 10)
        return 0;
    if (i == n)
        return 1;
    return s[i] == '.' && all_digits(s + i + 1, n - i - 1);
}

/* The value of a plain_ts text s[0:n] when it has at most 15 digits, else -1 (then
 * PyOS_string_to_double reads it). All its digits as an integer M < 10^15 < 2^53 and 10^f,
 * f the digits after the point, are exact doubles; IEEE division rounds the exact quotient
 * M / 10^f once, to nearest, which is what the correctly rounded strtod of Python gives
 * (where doubles are computed as doubles: not so with x87 registers, FLT_EVAL_METHOD 2, whose
 * extended quotient would be rounded twice). A tenth of its cost, for every kept line. */
static double
exact_ts(const char *s, Py_ssize_t n)
{
    static const double POW10[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    uint64_t v = 0;
    int digits = 0, point = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            point = digits;
            continue;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
        digits++;
    }
    if (digits > 15 || FLT_EVAL_METHOD != 0)
        return -1.0;
    return point < 0 ? (double)v : (double)v / POW10[digits - point];
}

/* "TCP_MISS/200": a letter first, ASCII before the last '/', digits after it of at most 999
 * (an HTTP status by value, "0200" too, as squid.py's _Targets.code_status reads it) */
static int
code_status(const char *s, Py_ssize_t n)
{
    Py_ssize_t k = n - 1;
    while (k >= 0 && s[k] != '/')
        k--;
    if (k <= 0)
        return 0;
    unsigned char c0 = (unsigned char)s[0];
    if (!((c0 >= 'A' && c0 <= 'Z') || (c0 >= 'a' && c0 <= 'z')))
        return 0;
    uint64_t high = 0;
    for (Py_ssize_t i = 1; i < k; i += 8)
        high |= word_at(s + i) & first_bytes(k - i);
    if (high & HIGHS)
        return 0;
    Py_ssize_t d = k + 1;
    while (d < n && s[d] == '0')
        d++;
    return n - d <= 3 && all_digits(s + k + 1, n - k - 1);
}

/* first occurrence of "://" in s[0:n], or -1 */
static Py_ssize_t
find_scheme_sep(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i + 2 < n; i++)
        if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/')
            return i;
    return -1;
}

/* The byte strings of the tuple `markers` (an LLM API path holds one): the bytes that are a
 * marker alone, the byte pairs that start a longer one (a bit per second byte), and the
 * first bytes of them all when there are at most four ('/' and ':' for the catalogue's),
 * which a path is searched for sixteen bytes at a time */
typedef struct {
    PyObject *tuple;
    unsigned char single[256];
    uint32_t pairs[256][8];
    int nfirst; /* how many first bytes, -1 when more than four */
    unsigned char first[4];
} Markers;

static void
markers_of(PyObject *tuple, Markers *m)
{
    memset(m, 0, sizeof(*m));
    m->tuple = tuple;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tuple); k++) {
        PyObject *b = PyTuple_GET_ITEM(tuple, k);
        if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) == 0)
            continue;
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(b);
        if (PyBytes_GET_SIZE(b) == 1)
            m->single[p[0]] = 1;
        else
            m->pairs[p[0]][p[1] >> 5] |= 1u << (p[1] & 31);
        if (m->nfirst >= 0 && memchr(m->first, p[0], (size_t)m->nfirst) == NULL)
            m->nfirst = m->nfirst < 4 ? (m->first[m->nfirst] = p[0], m->nfirst + 1) : -1;
    }
}

/* 1 when one of the markers starts at s[i] (s[0:n]): only a position whose two bytes start
 * a marker is compared with the markers (a path has few such positions) */
static inline int
marker_at(const char *s, Py_ssize_t n, Py_ssize_t i, const Markers *markers)
{
    const unsigned char *u = (const unsigned char *)s;
    if (markers->single[u[i]])
        return 1;
    if (i + 1 == n || !(markers->pairs[u[i]][u[i + 1] >> 5] >> (u[i + 1] & 31) & 1))
        return 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(markers->tuple); k++) {
        PyObject *m = PyTuple_GET_ITEM(markers->tuple, k);
        if (!PyBytes_Check(m))
            continue;
        Py_ssize_t mlen = PyBytes_GET_SIZE(m);
        if (mlen > 0 && mlen <= n - i && memcmp(s + i, PyBytes_AS_STRING(m), (size_t)mlen) == 0)
            return 1;
    }
    return 0;
}

/* 1 when s[0:n] holds one of the markers */
static int
has_marker(const char *s, Py_ssize_t n, const Markers *markers)
{
#if defined(__SSE2__) && !defined(ACCEL_PORTABLE)
    if (markers->nfirst == 0)
        return 0;
    if (markers->nfirst > 0) {
        __m128i f[4];
        for (int k = 0; k < 4; k++)
            f[k] = _mm_set1_epi8((char)markers->first[k < markers->nfirst ? k : 0]);
        for (Py_ssize_t i = 0; i < n; i += 16) {
            __m128i b;
            unsigned keep = 0xffff;
            if (i + 16 <= n) {
                b = _mm_loadu_si128((const __m128i *)(s + i));
            } else {
                char pad[16] = {0};
                memcpy(pad, s + i, (size_t)(n - i));
                b = _mm_loadu_si128((const __m128i *)pad);
                keep = (1u << (n - i)) - 1;
            }
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(b, f[0]), _mm_cmpeq_epi8(b, f[1])),
                                       _mm_or_si128(_mm_cmpeq_epi8(b, f[2]), _mm_cmpeq_epi8(b, f[3])));
            for (unsigned m = (unsigned)_mm_movemask_epi8(hit) & keep; m; m &= m - 1)
                if (marker_at(s, n, i + __builtin_ctz(m), markers))
                    return 1;
        }
        return 0;
    }
#endif
    for (Py_ssize_t i = 0; i < n; i++)
        if (marker_at(s, n, i, markers))
            return 1;
    return 0;
}

/* Published ingress ranges: sorted, disjoint [first, last] pairs of big-endian addresses
 * (4 or 16 bytes each); `octets` marks the first octets the IPv4 ones cover. */
typedef struct {
    const unsigned char *v4, *v6;
    Py_ssize_t n4, n6; /* pairs */
    unsigned char octets[32];
} Ranges;

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* 1 when the IPv4 address a lies in one of the pairs of r */
static int
in_v4(uint32_t a, const Ranges *r)
{
    Py_ssize_t lo = 0, hi = r->n4; /* the first pair whose first address is above a */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (be32(r->v4 + mid * 8) <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && a <= be32(r->v4 + (lo - 1) * 8 + 4);
}

/* 1 when the IPv6 address a (16 bytes) lies in one of the pairs of r */
static int
in_v6(const unsigned char *a, const Ranges *r)
{
    Py_ssize_t lo = 0, hi = r->n6;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (memcmp(r->v6 + mid * 32, a, 16) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && memcmp(a, r->v6 + (lo - 1) * 32 + 16, 16) <= 0;
}

/* a dotted quad as Python's ipaddress reads it (1-3 digits per octet, no leading zero,
 * at most 255) into *out; 0 when it is not one */
static int
parse_v4(const char *s, Py_ssize_t n, uint32_t *out)
{
    Py_ssize_t i = 0;
    uint32_t a = 0;
    for (int k = 0; k < 4; k++) {
        if (k > 0) {
            if (i >= n || s[i] != '.')
                return 0;
            i++;
        }
        Py_ssize_t start = i;
        unsigned v = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == start || v > 255 || (i - start > 1 && s[start] == '0'))
            return 0;
        a = a << 8 | v;
    }
    *out = a;
    return i == n;
}

/* the value of the 1-`most` digits (of base 10 or 16) at p[0:m] that a `sep` follows, or -1:
 * a first octet "160." or a first group "2607:" */
static long
leading_number(const char *p, Py_ssize_t m, int base, Py_ssize_t most, char sep)
{
    long v = 0;
    Py_ssize_t i = 0;
    for (; i < m && i < most; i++) {
        unsigned char c = (unsigned char)p[i], lower = (unsigned char)(c | 0x20);
        if (c >= '0' && c <= '9')
            v = v * base + (c - '0');
        else if (base == 16 && lower >= 'a' && lower <= 'f')
            v = v * base + (lower - 'a' + 10);
        else
            break;
    }
    return i > 0 && i < m && p[i] == sep ? v : -1;
}

/* Whether the peer of a %Sh/%<a field ("HIER_DIRECT/160.79.104.10") may lie in `r`:
 * 0 when Python's reading of it (SquidCollector: the text after the first '/', stripped of
 * brackets, read by ipaddress) is no address or one outside the ranges; 1 when it is in
 * them, or is text with a ':' that inet_pton cannot read (Python decides). The hierarchy
 * code is not looked at: Python does, for the few lines handed back. Most lines end on
 * their first octet or group, which no range covers: a number and a '.' first is an IPv4
 * address or none (no IPv6 text starts so), and an IPv6 address starts with its first group. */
static int
peer_in_ranges(const char *s, Py_ssize_t n, const Ranges *r)
{
    const char *slash = n >= 12 && memcmp(s, "HIER_DIRECT/", 12) == 0
                            ? s + 11
                            : memchr(s, '/', (size_t)n);
    if (slash == NULL)
        return 0;
    const char *p = slash + 1;
    Py_ssize_t m = s + n - p;
    while (m > 0 && (*p == '[' || *p == ']'))
        p++, m--;
    while (m > 0 && (p[m - 1] == '[' || p[m - 1] == ']'))
        m--;
    long first = leading_number(p, m, 10, 3, '.');
    if (first >= 0) {
        uint32_t a;
        return first <= 255 && (r->octets[first >> 3] >> (first & 7) & 1) && parse_v4(p, m, &a) &&
               in_v4(a, r);
    }
    if (m == 0 || memchr(p, ':', (size_t)m) == NULL)
        return 0; /* "-", a host name: no address */
    long group = leading_number(p, m, 16, 4, ':');
    if (group >= 0) {
        int near = 0;
        for (Py_ssize_t k = 0; k < r->n6 && !near; k++) {
            const unsigned char *pair = r->v6 + k * 32;
            near = (pair[0] << 8 | pair[1]) <= group && group <= (pair[16] << 8 | pair[17]);
        }
        if (!near)
            return 0;
    }
    char buf[INET6_ADDRSTRLEN];
    unsigned char a6[16];
    if (m >= (Py_ssize_t)sizeof(buf))
        return 1;
    memcpy(buf, p, (size_t)m);
    buf[m] = '\0';
    if (inet_pton(AF_INET6, buf, a6) != 1)
        return 1; /* a zone index, or text only Python may read */
    return in_v6(a6, r);
}

/* Record ids: monitor.ids.record_id(line), blake2b(line, digest_size=12).hexdigest(), in C
 * (BLAKE2b as RFC 7693 defines it, unkeyed; the tests compare it with hashlib's). */
static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};
static const uint8_t B2_SIGMA[10][16] = { /* round r uses row r mod 10 */
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static uint64_t
rotr64(uint64_t x, int n)
{
    return (x >> n) | (x << (64 - n));
}

/* the 16 little-endian words of a message block: one copy (the host is little-endian: the
 * build stops otherwise, see the top) */
static inline void
load_block(uint64_t m[16], const unsigned char *block)
{
    memcpy(m, block, 128);
}

#define B2_G(a, b, c, d, x, y)                                                                 \
    do {                                                                                       \
        v[a] = v[a] + v[b] + (x);                                                              \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                        \
        v[c] = v[c] + v[d];                                                                    \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                        \
        v[a] = v[a] + v[b] + (y);                                                              \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                        \
        v[c] = v[c] + v[d];                                                                    \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                        \
    } while (0)

#define B2_ROUND(r)                                                                            \
    do {                                                                                       \
        B2_G(0, 4, 8, 12, m[B2_SIGMA[r][0]], m[B2_SIGMA[r][1]]);                               \
        B2_G(1, 5, 9, 13, m[B2_SIGMA[r][2]], m[B2_SIGMA[r][3]]);                               \
        B2_G(2, 6, 10, 14, m[B2_SIGMA[r][4]], m[B2_SIGMA[r][5]]);                              \
        B2_G(3, 7, 11, 15, m[B2_SIGMA[r][6]], m[B2_SIGMA[r][7]]);                              \
        B2_G(0, 5, 10, 15, m[B2_SIGMA[r][8]], m[B2_SIGMA[r][9]]);                              \
        B2_G(1, 6, 11, 12, m[B2_SIGMA[r][10]], m[B2_SIGMA[r][11]]);                            \
        B2_G(2, 7, 8, 13, m[B2_SIGMA[r][12]], m[B2_SIGMA[r][13]]);                             \
        B2_G(3, 4, 9, 14, m[B2_SIGMA[r][14]], m[B2_SIGMA[r][15]]);                             \
    } while (0)

/* one 128-byte block; t: bytes hashed so far, this block's included (lines are < 2^64).
 * The portable compression, and the reference of the vector one below. */
static void
b2_compress_portable(uint64_t h[8], const unsigned char *block, uint64_t t, int last)
{
    uint64_t v[16], m[16];
    load_block(m, block);
    for (int k = 0; k < 8; k++) {
        v[k] = h[k];
        v[k + 8] = B2_IV[k];
    }
    v[12] ^= t;
    if (last)
        v[14] = ~v[14];
    /* the rounds written out: constant message indexes keep m in registers (a quarter
     * faster than a loop over the rounds) */
    B2_ROUND(0);
    B2_ROUND(1);
    B2_ROUND(2);
    B2_ROUND(3);
    B2_ROUND(4);
    B2_ROUND(5);
    B2_ROUND(6);
    B2_ROUND(7);
    B2_ROUND(8);
    B2_ROUND(9);
    B2_ROUND(0);
    B2_ROUND(1);
    for (int k = 0; k < 8; k++)
        h[k] ^= v[k] ^ v[k + 8];
}

/* The same compression with AVX2, chosen at run time (b2_compress, set by the module's init
 * when the CPU has AVX2; -DACCEL_PORTABLE leaves it out): the state's four rows v[0:4],
 * v[4:8], v[8:12], v[12:16] are one 256-bit register each, a, b, c, d, so a step computes
 * the four G of its columns at once. For the diagonal step a, c and d are turned by three,
 * one and two words, which puts each diagonal in a column (lane k: the G whose b is v[4+k]),
 * and back after it. Not b: the last value each step makes, which the next step needs first;
 * a, c and d are ready earlier, so their turns overlap the step instead of lengthening it
 * (the compression is bound by the latency of its chain of operations, not by their number). */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(ACCEL_PORTABLE)
#define B2_AVX2 1
#include <immintrin.h>

#define B2V_ADD _mm256_add_epi64
#define B2V_XOR _mm256_xor_si256
/* rotations right of each 64-bit word: 32 by swapping its halves, 24 and 16 by moving its
 * bytes, 63 as the word shifted left by one (x + x) with its top bit brought in at the bottom */
#define B2V_ROTR32(x) _mm256_shuffle_epi32((x), _MM_SHUFFLE(2, 3, 0, 1))
#define B2V_ROTR24(x) _mm256_shuffle_epi8((x), rot24)
#define B2V_ROTR16(x) _mm256_shuffle_epi8((x), rot16)
#define B2V_ROTR63(x) _mm256_or_si256(_mm256_srli_epi64((x), 63), _mm256_add_epi64((x), (x)))

/* the four G of a step, the words x of their first half and y of their second in the lanes
 * of their b; a + x is added before b, which is the later one ready */
#define B2V_G(x, y)                                                                            \
    do {                                                                                       \
        a = B2V_ADD(B2V_ADD(a, (x)), b);                                                       \
        d = B2V_ROTR32(B2V_XOR(d, a));                                                         \
        c = B2V_ADD(c, d);                                                                     \
        b = B2V_ROTR24(B2V_XOR(b, c));                                                         \
        a = B2V_ADD(B2V_ADD(a, (y)), b);                                                       \
        d = B2V_ROTR16(B2V_XOR(d, a));                                                         \
        c = B2V_ADD(c, d);                                                                     \
        b = B2V_ROTR63(B2V_XOR(b, c));                                                         \
    } while (0)

/* the message words of round r at sigma positions i, j, k, l, lane 0 first: each word loaded
 * into every lane (a load), then blended (any ALU port), sparing the shuffle port, which the
 * rotations and turns keep busy */
#define B2V_W(r, i) _mm256_set1_epi64x((long long)m[B2_SIGMA[r][i]])
#define B2V_MSG(r, i, j, k, l)                                                                 \
    _mm256_blend_epi32(_mm256_blend_epi32(B2V_W(r, i), B2V_W(r, j), 0x0C),                     \
                       _mm256_blend_epi32(B2V_W(r, k), B2V_W(r, l), 0xC0), 0xF0)

/* columns: lane k is G(k, 4+k, 8+k, 12+k), the (2k)th and (2k+1)th words of sigma; the
 * diagonals in the lanes of their b: G(3,4,9,14), G(0,5,10,15), G(1,6,11,12), G(2,7,8,13) */
#define B2V_ROUND(r)                                                                           \
    do {                                                                                       \
        B2V_G(B2V_MSG(r, 0, 2, 4, 6), B2V_MSG(r, 1, 3, 5, 7));                                 \
        a = _mm256_permute4x64_epi64(a, _MM_SHUFFLE(2, 1, 0, 3));                              \
        c = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(0, 3, 2, 1));                              \
        d = _mm256_permute4x64_epi64(d, _MM_SHUFFLE(1, 0, 3, 2));                              \
        B2V_G(B2V_MSG(r, 14, 8, 10, 12), B2V_MSG(r, 15, 9, 11, 13));                           \
        a = _mm256_permute4x64_epi64(a, _MM_SHUFFLE(0, 3, 2, 1));                              \
        c = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(2, 1, 0, 3));                              \
        d = _mm256_permute4x64_epi64(d, _MM_SHUFFLE(1, 0, 3, 2));                              \
    } while (0)

__attribute__((target("avx2"))) static void
b2_compress_avx2(uint64_t h[8], const unsigned char *block, uint64_t t, int last)
{
    const __m256i rot24 = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                           3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    const __m256i rot16 = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                           2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    uint64_t m[16];
    load_block(m, block);
    const __m256i h0 = _mm256_loadu_si256((const __m256i *)h);
    const __m256i h1 = _mm256_loadu_si256((const __m256i *)(h + 4));
    __m256i a = h0, b = h1;
    __m256i c = _mm256_loadu_si256((const __m256i *)B2_IV);
    __m256i d = B2V_XOR(_mm256_loadu_si256((const __m256i *)(B2_IV + 4)),
                        _mm256_set_epi64x(0, last ? -1 : 0, 0, (long long)t));
    B2V_ROUND(0);
    B2V_ROUND(1);
    B2V_ROUND(2);
    B2V_ROUND(3);
    B2V_ROUND(4);
    B2V_ROUND(5);
    B2V_ROUND(6);
    B2V_ROUND(7);
    B2V_ROUND(8);
    B2V_ROUND(9);
    B2V_ROUND(0);
    B2V_ROUND(1);
    _mm256_storeu_si256((__m256i *)h, B2V_XOR(h0, B2V_XOR(a, c)));
    _mm256_storeu_si256((__m256i *)(h + 4), B2V_XOR(h1, B2V_XOR(b, d)));
}
#endif

/* the compression in use: the portable one, or one the CPU runs faster (the module's init) */
static void (*b2_compress)(uint64_t h[8], const unsigned char *block, uint64_t t,
                           int last) = b2_compress_portable;

/* h: the BLAKE2b state of s[0:n] hashed whole, for a digest of `size` bytes (1..64) */
static void
b2_hash(uint64_t h[8], const char *s, Py_ssize_t n, int size)
{
    memcpy(h, B2_IV, 8 * sizeof(uint64_t));
    h[0] ^= 0x01010000ULL ^ (uint64_t)size; /* fanout 1, depth 1, no key, digest length */
    const unsigned char *p = (const unsigned char *)s;
    uint64_t t = 0;
    for (; n > 128; p += 128, n -= 128) {
        t += 128;
        b2_compress(h, p, t, 0);
    }
    unsigned char last[128];
    memcpy(last, p, (size_t)n);
    memset(last + n, 0, 128 - (size_t)n);
    b2_compress(h, last, t + (uint64_t)n, 1);
}

/* the record id of s[0:n]: its bytes into raw (RECORD_ID_BYTES), their hex into hex */
static void
record_id_raw(const char *s, Py_ssize_t n, unsigned char *raw, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    uint64_t h[8];
    b2_hash(h, s, n, RECORD_ID_BYTES);
    for (int k = 0; k < RECORD_ID_BYTES; k++) {
        unsigned b = (unsigned)(h[k / 8] >> (8 * (k % 8))) & 0xff;
        raw[k] = (unsigned char)b;
        hex[2 * k] = digits[b >> 4];
        hex[2 * k + 1] = digits[b & 15];
    }
}

/* the record id of s[0:n] as a str of 24 hex digits; NULL with an error set */
static PyObject *
record_id_of(const char *s, Py_ssize_t n)
{
    unsigned char raw[RECORD_ID_BYTES];
    char hex[2 * RECORD_ID_BYTES];
    record_id_raw(s, n, raw, hex);
    PyObject *out = PyUnicode_New(2 * RECORD_ID_BYTES, 127);
    if (out == NULL)
        return NULL;
    memcpy(PyUnicode_1BYTE_DATA(out), hex, sizeof(hex));
    return out;
}

/* monitor.ids.observation_id of the record id s[0:n] (its UTF-8), nth 0: the BLAKE2b-64 of
 * it, big-endian, shifted right by one */
static uint64_t
first_id_value(const char *s, Py_ssize_t n)
{
    uint64_t h[8];
    b2_hash(h, s, n, 8);
    uint64_t v = h[0]; /* little-endian words: the digest's bytes are h[0]'s, low first */
    uint64_t be = 0;
    for (int k = 0; k < 8; k++, v >>= 8)
        be = be << 8 | (v & 0xff);
    return be >> 1;
}

static PyObject *
first_id_of(const char *s, Py_ssize_t n)
{
    return PyLong_FromUnsignedLongLong(first_id_value(s, n));
}

/* the value of s[0:n], 1-18 digits (no overflow) */
static long long
small_int(const char *s, Py_ssize_t n)
{
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* Verdicts: the host filter's verdicts on targets (the keys of `rejects`) in a C table, so
 * that a line's target is looked up without making it a bytes object and hashing it through
 * Python. It only mirrors `rejects`: a target is added when it is found there, so what is
 * decided stays Python's; squid.py clears both together. Bounded: VERDICT_SLOTS slots of
 * 64 bytes, at most half of them used (then it is emptied, as the Python caches are), keys
 * of at most VERDICT_KEY bytes, and a lookup looks at VERDICT_PROBES slots at most (targets
 * come from the log: a run of colliding ones only sends the lines to `rejects`). */
#define VERDICT_SLOTS 32768
#define VERDICT_KEY 48
#define VERDICT_PROBES 16

typedef struct {
    uint64_t hash; /* 0: empty */
    uint16_t len;
    uint8_t connect; /* a CONNECT target (`connects`), else a URL's (`rejects`) */
    uint8_t verdict; /* 1: rejected */
    char key[VERDICT_KEY];
} VerdictSlot;

/* Line keys (see known_of) remembered by their text: the bytes object made for a key the
 * first time, so that a later line of the key is looked up in `known` with that object,
 * whose hash Python keeps in it and which `known` holds itself (found by identity), instead
 * of a new bytes object hashed through Python (siphash over the ~90 bytes of a key) and
 * freed, per kept CONNECT. `known` stays what decides: what is kept here is only the
 * bytes objects made here (immutable), whether `known` holds them or not. Bounded as the
 * verdicts are: NAME_SLOTS slots, at most half of them used (then all are let go; a key
 * whose NAME_PROBES slots are taken is not remembered), NAME_PROBES probes a lookup. */
#define NAME_SLOTS 65536
#define NAME_PROBES 16

typedef struct {
    uint64_t hash; /* 0: empty */
    PyObject *key; /* a bytes object, held */
} NameSlot;

typedef struct {
    PyObject_HEAD
    Py_ssize_t used;
    uint64_t seed;
    VerdictSlot *slot;
    Py_ssize_t names_used;
    NameSlot *names;
} Verdicts;

static PyTypeObject VerdictsType;

static uint64_t
mix64(uint64_t h)
{
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;
    return h;
}

/* the last bytes of s[0:n] (1 <= n) as a word: the last eight, or when n < 8 the n bytes
 * and zeros (s[0:8] readable: a target is followed in its line by three more fields) */
static inline uint64_t
tail_word(const char *s, Py_ssize_t n)
{
    uint64_t w;
    if (n >= 8) {
        memcpy(&w, s + n - 8, 8);
        return w;
    }
    memcpy(&w, s, 8);
    return w & ((1ULL << (8 * n)) - 1);
}

/* a 64-bit hash of s[0:n] (0 < n; a target's n <= VERDICT_KEY, a line key's 8 < n, see
 * name_hash and tail_word) as a CONNECT target or not, never 0: the words before the last,
 * then the last eight bytes (n is hashed too) */
static inline uint64_t
verdict_hash(uint64_t seed, int connect, const char *s, Py_ssize_t n)
{
    uint64_t h = seed ^ ((uint64_t)(n * 2 + connect) * 0x9e3779b97f4a7c15ULL);
    for (Py_ssize_t i = 0; i + 8 < n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
    }
    h = mix64(h ^ tail_word(s, n) ^ 0xff51afd7ed558ccdULL);
    return mix64(h) | 1;
}

/* key[0:n] == s[0:n] (0 < n <= VERDICT_KEY), for the keys of the table, inline: a key's
 * slot holds VERDICT_KEY bytes */
static inline int
same_key(const char *key, const char *s, Py_ssize_t n)
{
    uint64_t diff = 0, a, b;
    for (Py_ssize_t i = 0; i + 8 < n; i += 8) {
        memcpy(&a, key + i, 8);
        memcpy(&b, s + i, 8);
        diff |= a ^ b;
    }
    return (diff | (tail_word(key, n) ^ tail_word(s, n))) == 0;
}

/* the verdict on s[0:n] (0 kept, 1 rejected), or -1 when the table does not hold it */
static int
verdict_get(const Verdicts *v, uint64_t h, int connect, const char *s, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < VERDICT_PROBES; k++) {
        const VerdictSlot *e = &v->slot[(h + (uint64_t)k) & (VERDICT_SLOTS - 1)];
        if (e->hash == 0)
            return -1;
        if (e->hash == h && e->len == n && e->connect == connect && same_key(e->key, s, n))
            return e->verdict;
    }
    return -1;
}

static void
verdict_put(Verdicts *v, uint64_t h, int connect, const char *s, Py_ssize_t n, int verdict)
{
    if (v->used >= VERDICT_SLOTS / 2) {
        memset(v->slot, 0, sizeof(VerdictSlot) * VERDICT_SLOTS);
        v->used = 0;
    }
    for (Py_ssize_t k = 0; k < VERDICT_PROBES; k++) {
        VerdictSlot *e = &v->slot[(h + (uint64_t)k) & (VERDICT_SLOTS - 1)];
        if (e->hash == 0) {
            e->hash = h;
            e->len = (uint16_t)n;
            e->connect = (uint8_t)connect;
            e->verdict = (uint8_t)verdict;
            memcpy(e->key, s, (size_t)n);
            v->used++;
            return;
        }
    }
}

/* the bytes object remembered for the line key s[0:n] (hash h, see name_hash), borrowed,
 * or NULL */
static PyObject *
name_get(const Verdicts *v, uint64_t h, const char *s, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < NAME_PROBES; k++) {
        const NameSlot *e = &v->names[(h + (uint64_t)k) & (NAME_SLOTS - 1)];
        if (e->hash == 0)
            return NULL;
        if (e->hash == h && PyBytes_GET_SIZE(e->key) == n &&
            memcmp(PyBytes_AS_STRING(e->key), s, (size_t)n) == 0)
            return e->key;
    }
    return NULL;
}

static void
names_clear(Verdicts *v)
{
    for (Py_ssize_t k = 0; k < NAME_SLOTS && v->names_used > 0; k++) {
        NameSlot *e = &v->names[k];
        if (e->hash != 0) {
            e->hash = 0;
            v->names_used--;
            Py_CLEAR(e->key); /* a bytes object: its release runs no Python code */
        }
    }
}

/* remember `key` (a bytes object, the line key of hash h) */
static void
name_put(Verdicts *v, uint64_t h, PyObject *key)
{
    if (v->names_used >= NAME_SLOTS / 2)
        names_clear(v);
    for (Py_ssize_t k = 0; k < NAME_PROBES; k++) {
        NameSlot *e = &v->names[(h + (uint64_t)k) & (NAME_SLOTS - 1)];
        if (e->hash == 0) {
            e->hash = h;
            e->key = Py_NewRef(key);
            v->names_used++;
            return;
        }
    }
}

/* a 64-bit hash of the line key s[0:n] (8 < n: it starts with its day's 8 bytes), never 0 */
static inline uint64_t
name_hash(const Verdicts *v, const char *s, Py_ssize_t n)
{
    return verdict_hash(v->seed ^ 0x94d049bb133111ebULL, 0, s, n);
}

static PyObject *
Verdicts_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Verdicts() takes no arguments");
        return NULL;
    }
    Verdicts *v = (Verdicts *)type->tp_alloc(type, 0);
    if (v == NULL)
        return NULL;
    v->slot = PyMem_Calloc(VERDICT_SLOTS, sizeof(VerdictSlot));
    v->names = PyMem_Calloc(NAME_SLOTS, sizeof(NameSlot));
    if (v->slot == NULL || v->names == NULL) {
        Py_DECREF(v);
        return PyErr_NoMemory();
    }
    /* targets come from the log: a seed its writer cannot know */
    v->seed = mix64((uint64_t)(uintptr_t)v->slot ^ (uint64_t)(uintptr_t)v ^ 0x2545f4914f6cdd1dULL);
    return (PyObject *)v;
}

static void
Verdicts_dealloc(Verdicts *v)
{
    if (v->names != NULL)
        names_clear(v);
    PyMem_Free(v->names);
    PyMem_Free(v->slot);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static PyObject *
Verdicts_clear(Verdicts *v, PyObject *unused)
{
    memset(v->slot, 0, sizeof(VerdictSlot) * VERDICT_SLOTS);
    v->used = 0;
    names_clear(v);
    Py_RETURN_NONE;
}

static Py_ssize_t
Verdicts_len(Verdicts *v)
{
    return v->used;
}

static PyMethodDef Verdicts_methods[] = {
    {"clear", (PyCFunction)Verdicts_clear, METH_NOARGS,
     "Forget every verdict (and every line key remembered)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Verdicts_as_sequence = {
    .sq_length = (lenfunc)Verdicts_len,
};

static PyTypeObject VerdictsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "monitor.collectors._squidscan.Verdicts",
    .tp_doc = "Verdicts() -> the host filter's verdicts on targets, mirrored from `rejects` "
              "for native_chunk (bounded: at most CAPACITY targets), and the line keys' "
              "objects it made (at most NAMES).",
    .tp_basicsize = sizeof(Verdicts),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Verdicts_new,
    .tp_dealloc = (destructor)Verdicts_dealloc,
    .tp_methods = Verdicts_methods,
    .tp_as_sequence = &Verdicts_as_sequence,
};

#define DROP 1 /* counted and dropped */
#define KEEP 2 /* kept: split into fields */

/* One line of a chunk: split into its fields, its target found and hashed, the slot of its
 * verdict fetched; its verdict not yet looked up (that is done a line later, so that the
 * slot, most often not cached, is fetched while the line before is dealt with). */
typedef struct {
    const char *line;
    Py_ssize_t n;   /* its length, without the newline and the carriage returns before it */
    int split;      /* ten fields, s[0:n] free of NUL bytes and not longer than max_line */
    int connect;    /* a CONNECT: the target is a connects key, else a rejects key */
    const char *tok[FIELDS];
    Py_ssize_t len[FIELDS];
    Py_ssize_t tlen; /* the target: tok[6][0:tlen] */
    uint64_t h;      /* its hash in verdicts, 0 when verdicts do not hold it */
} Line;

/* the line of the chunk data[0:size] at *pos into ln, and *pos past it; 0 when no newline
 * ends it (the start of a line that the next chunk holds).
 *
 * One pass, 64 bytes at a time from the line's start, finds its newline, its NUL bytes and
 * the edges of its fields (as bytes.split() cuts them: a field starts where a separator is
 * followed by another byte, ends where one is preceded by another byte, the line's start
 * counting as a separator). Ten fields are twenty edges up to the newline (a separator); a
 * twenty-first is the start of an eleventh field, a NUL makes the line Python's: then the
 * newline is only looked for. */
static int
next_line(const char *data, Py_ssize_t size, Py_ssize_t *pos, int clean, Py_ssize_t max_line,
          const Verdicts *verdicts, Line *ln)
{
    const char *s = data + *pos;
    Py_ssize_t avail = size - *pos, end = -1;
    int32_t edge[2 * FIELDS + 64];
    int edges = 0, whole = 1; /* whole: no NUL, at most ten fields so far */
    uint64_t before = 1;      /* whether the byte before the block is a separator */
    for (Py_ssize_t base = 0; base < avail; base += 64) {
        if (base > INT32_MAX - 64)
            whole = 0; /* edges as int32_t: a line so long is Python's (never kept anyway) */
        uint64_t sep, nl, nul;
        if (base + 64 <= avail) {
            sep = scan_block(s + base, &nl, &nul, clean);
        } else {
            char pad[64]; /* separators past the chunk, but no newline and no NUL */
            memset(pad, ' ', sizeof(pad));
            memcpy(pad, s + base, (size_t)(avail - base));
            sep = scan_block(pad, &nl, &nul, clean);
        }
        uint64_t upto = ~0ULL; /* the bits of the line, its newline included */
        if (nl) {
            int k = __builtin_ctzll(nl);
            end = base + k;
            if (k < 63)
                upto = (2ULL << k) - 1;
        }
        if (nul & upto)
            whole = 0;
        uint64_t edges64 = (sep ^ (sep << 1 | before)) & upto;
        before = sep >> 63;
        if (whole) {
            /* edge has room for a whole block of them past the twentieth; more than twenty
             * are an eleventh field */
            for (int32_t at = (int32_t)base; edges64; edges64 &= edges64 - 1)
                edge[edges++] = at + __builtin_ctzll(edges64);
            whole = edges <= 2 * FIELDS;
        }
        if (end >= 0)
            break;
        if (!whole) {
            Py_ssize_t from = base + 64;
            const char *found = from < avail ? memchr(s + from, '\n', (size_t)(avail - from))
                                             : NULL;
            if (found != NULL)
                end = found - s;
            break;
        }
    }
    if (end < 0)
        return 0;
    Py_ssize_t n = end;
    *pos += n + 1;
    while (n > 0 && s[n - 1] == '\r')
        n--;
    ln->line = s;
    ln->n = n;
    ln->split = 0;
    ln->h = 0;
    if (!whole || edges != 2 * FIELDS || n > max_line)
        return 1;
    for (int k = 0; k < FIELDS; k++) {
        ln->tok[k] = s + edge[2 * k];
        ln->len[k] = edge[2 * k + 1] - edge[2 * k];
    }
    ln->split = 1;
    const char *target = ln->tok[6];
    Py_ssize_t tlen = ln->len[6];
    ln->connect = ln->len[5] == 7 && memcmp(ln->tok[5], "CONNECT", 7) == 0;
    if (!ln->connect) {
        Py_ssize_t sep = find_scheme_sep(target, tlen);
        if (sep > 0) {
            const char *slash = memchr(target + sep + 3, '/', (size_t)(tlen - sep - 3));
            if (slash != NULL)
                tlen = slash - target;
        }
    }
    ln->tlen = tlen;
    if (verdicts != NULL && tlen <= VERDICT_KEY) {
        ln->h = verdict_hash(verdicts->seed, ln->connect, target, tlen);
        __builtin_prefetch(&verdicts->slot[ln->h & (VERDICT_SLOTS - 1)]);
    }
    return 1;
}

/* What becomes of a split line: DROP, KEEP; 0: to the Python loop by index; -1: error set.
 * On KEEP, *ts, *elapsed, *size hold the values of its fields, at most MAX_COUNT (a kept
 * line with a larger one is the Python loop's to report: one reason, made in one place). */
static int
classify(const Line *ln, PyObject *rejects, PyObject *connects, Verdicts *verdicts,
         const Markers *markers, const Ranges *ranges, double *ts, long long *elapsed,
         long long *size)
{
    const char *const *tok = ln->tok;
    const Py_ssize_t *len = ln->len;
    const char *target = tok[6];
    Py_ssize_t tlen = ln->tlen;
    int connect = ln->connect;
    uint64_t h = ln->h;
    int rejected = -1;
    /* their values are only worked out for a kept line */
    if (len[1] > 18 || !all_digits(tok[1], len[1]) || len[4] > 18 ||
        !all_digits(tok[4], len[4]) || !code_status(tok[3], len[3]) || !plain_ts(tok[0], len[0]))
        return 0;
    if (h != 0)
        rejected = verdict_get(verdicts, h, connect, target, tlen);
    if (rejected < 0) {
        PyObject *key = PyBytes_FromStringAndSize(target, tlen);
        if (key == NULL)
            return -1;
        PyObject *verdict = PyDict_GetItemWithError(connect ? connects : rejects, key);
        Py_DECREF(key);
        if (verdict == NULL)
            return PyErr_Occurred() ? -1 : 0;
        if (verdict != Py_False && verdict != Py_True)
            return 0;
        rejected = verdict == Py_True;
        if (h != 0)
            verdict_put(verdicts, h, connect, target, tlen, rejected);
    }
    if (!rejected) {
        /* plain_ts: at most 10 digits, '.', digits; longer fractions go to Python */
        *ts = exact_ts(tok[0], len[0]);
        if (*ts < 0) {
            char buf[40];
            if (len[0] >= (Py_ssize_t)sizeof(buf))
                return 0;
            memcpy(buf, tok[0], (size_t)len[0]);
            buf[len[0]] = '\0';
            *ts = PyOS_string_to_double(buf, NULL, NULL);
            if (*ts == -1.0 && PyErr_Occurred())
                return -1;
        }
        *elapsed = small_int(tok[1], len[1]);
        *size = small_int(tok[4], len[4]);
        if (*elapsed > MAX_COUNT || *size > MAX_COUNT)
            return 0; /* out of range: the Python loop reports the line as malformed */
        return KEEP;
    }
    if (tlen < len[6] && has_marker(target + tlen, len[6] - tlen, markers))
        return 0; /* a URL whose path may be an LLM API's */
    if ((ranges->n4 > 0 || ranges->n6 > 0) && peer_in_ranges(tok[8], len[8], ranges))
        return 0; /* the origin may be a provider's published ingress address */
    return DROP;
}

/* the tuple a kept line becomes (see the top of this file); steals nothing */
static PyObject *
fields_of(Py_ssize_t index, const char *const *tok, const Py_ssize_t *len, double ts,
          long long elapsed, long long size, const char *line, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(FIELDS + 1);
    if (t == NULL)
        return NULL;
    PyObject *v[FIELDS + 1] = {
        PyLong_FromSsize_t(index),
        PyFloat_FromDouble(ts),
        PyLong_FromLongLong(elapsed),
        PyBytes_FromStringAndSize(tok[2], len[2]),
        PyBytes_FromStringAndSize(tok[3], len[3]),
        PyLong_FromLongLong(size),
        PyBytes_FromStringAndSize(tok[5], len[5]),
        PyBytes_FromStringAndSize(tok[6], len[6]),
        PyBytes_FromStringAndSize(tok[7], len[7]),
        PyBytes_FromStringAndSize(tok[8], len[8]),
        record_id_of(line, n),
    };
    int ok = 1;
    for (int k = 0; k <= FIELDS; k++) {
        if (v[k] == NULL)
            ok = 0;
        PyTuple_SET_ITEM(t, k, v[k]); /* a NULL slot is fine for Py_DECREF of the tuple */
    }
    if (!ok) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* What a kept CONNECT line becomes when every value it needs is in the collector's caches
 * (squid.py `_Targets`: bytes -> value): the Observation SquidCollector._parse_native makes of
 * it, made here. `maker` is the tuple (Observation, source, format, first, codes, words,
 * connect, ips, hiers, kwnames[, layout[, known]]): first the number of the chunk's
 * line before its first, kwnames ("record_id",).
 *
 * With `known` (a dict: see squid.py `Known`), a kept CONNECT is named by its line key: the
 * bytes of its day (the 8 bytes of the double ts // 86400, as Python computes it) and of its
 * fields client, code/status, target, user and peer, separated by spaces (no field holds one).
 * Every value of its Observation but ts, line, bytes_in, duration and record_id follows from
 * that key and the source. A record of a key `known` holds is its entry known[key] and its
 * KnownRecord (those values, its record id's bytes and its observation id); any other
 * line the maker makes becomes the pair (Observation, key) (key None when it is too long
 * to be one), for the consumer to fill `known`. Consecutive records of known keys (lines
 * dropped between them do not part them) come in one run, the pair (a list of their
 * entries, the bytes of their KnownRecords): the consumer takes a run whole, and no object
 * is made per record. */
#define MAX_SLOTS 64
#define KNOWN_KEY 512
typedef struct {
    PyObject *cls, *source, *format, *codes, *words, *connect, *ips, *hiers, *kwnames;
    PyObject *known; /* NULL: none */
    Py_ssize_t first;
    /* with a layout: the slots of Observation, their offsets and defaults, filled here
     * instead of calling its __init__ (which only stores its arguments) */
    Py_ssize_t nslots, rid;
    Py_ssize_t offset[MAX_SLOTS];
    PyObject *fallback[MAX_SLOTS];
} Maker;

static PyObject *CONNECT_SOURCE; /* the host_source "connect" */

/* the value dict holds for s[0:n] (borrowed), NULL if none; *err set on a failure */
static PyObject *
cached(PyObject *dict, const char *s, Py_ssize_t n, int *err)
{
    PyObject *key = PyBytes_FromStringAndSize(s, n);
    if (key == NULL) {
        *err = 1;
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(dict, key);
    Py_DECREF(key);
    if (v == NULL && PyErr_Occurred())
        *err = 1;
    return v;
}

/* the Observation of a kept line; NULL and no error when it is no CONNECT or a value is not
 * cached yet (the line goes to Python as a tuple), NULL and an error set on a failure */
static PyObject *
observation_of(const Maker *mk, Py_ssize_t index, const char *const *tok, const Py_ssize_t *len,
               double ts, long long elapsed, long long size, const char *line, Py_ssize_t n)
{
    if (!(len[5] == 7 && memcmp(tok[5], "CONNECT", 7) == 0))
        return NULL;
    int err = 0;
    PyObject *cs = cached(mk->codes, tok[3], len[3], &err);
    PyObject *method = err ? NULL : cached(mk->words, tok[5], len[5], &err);
    PyObject *hp = err ? NULL : cached(mk->connect, tok[6], len[6], &err);
    PyObject *client = err ? NULL : cached(mk->ips, tok[2], len[2], &err);
    PyObject *dest = err ? NULL : cached(mk->hiers, tok[8], len[8], &err);
    PyObject *user = Py_None;
    if (!err && !(len[7] == 1 && tok[7][0] == '-'))
        user = cached(mk->words, tok[7], len[7], &err);
    if (err)
        return NULL;
    if (cs == NULL || method == NULL || hp == NULL || client == NULL || dest == NULL ||
        user == NULL || !PyTuple_CheckExact(cs) || PyTuple_GET_SIZE(cs) != 2 ||
        !PyTuple_CheckExact(hp) || PyTuple_GET_SIZE(hp) != 2)
        return NULL;
    /* held while objects are made (an allocation may collect garbage, and run Python code) */
    PyObject *held[] = {cs, method, hp, client, dest, user};
    for (size_t k = 0; k < sizeof(held) / sizeof(held[0]); k++)
        Py_INCREF(held[k]);
    PyObject *host = PyTuple_GET_ITEM(hp, 0);
    PyObject *hsrc = PyUnicode_Check(host) && PyUnicode_GET_LENGTH(host) > 0 ? CONNECT_SOURCE
                                                                              : Py_None;
    PyObject *lineno = PyLong_FromSsize_t(mk->first + index + 1);
    PyObject *when = PyFloat_FromDouble(ts);
    PyObject *bytes_in = PyLong_FromLongLong(size);
    PyObject *duration = PyFloat_FromDouble((double)elapsed / 1000.0);
    PyObject *rid = record_id_of(line, n);
    PyObject *o = NULL;
    if (lineno != NULL && when != NULL && bytes_in != NULL && duration != NULL && rid != NULL) {
        /* Observation(ts, source, line, format, client_ip, client_port, user, method,
         * dest_host, dest_port, dest_ip, url, status, bytes_out, bytes_in, host_source,
         * result, duration, record_id=) as squid.py's POSITIONAL_FIELDS */
        PyObject *args[19] = {
            when, mk->source, lineno, mk->format, client, Py_None, user, method, host,
            PyTuple_GET_ITEM(hp, 1), dest, Py_None, PyTuple_GET_ITEM(cs, 1), Py_None,
            bytes_in, hsrc, PyTuple_GET_ITEM(cs, 0), duration, rid,
        };
        if (mk->nslots > 0) {
            PyTypeObject *tp = (PyTypeObject *)mk->cls;
            o = tp->tp_alloc(tp, 0);
            int atoms = 1; /* every value a str, a number or None, none a container */
            for (Py_ssize_t k = 0; o != NULL && k < mk->nslots; k++) {
                PyObject *v = k < 18 ? args[k] : k == mk->rid ? rid : mk->fallback[k];
                *(PyObject **)((char *)o + mk->offset[k]) = Py_NewRef(v);
                atoms &= !PyObject_IS_GC(v);
            }
            /* then it can be in no reference cycle (its fields are typed so): the cycle
             * collector need not watch it, as CPython does not watch a tuple of atoms.
             * Hundreds of thousands of them per chunk at a 25 % LLM share woke it often. */
            if (o != NULL && atoms && PyObject_IS_GC(o))
                PyObject_GC_UnTrack(o);
        } else {
            o = PyObject_Vectorcall(mk->cls, args, 18, mk->kwnames);
        }
    }
    for (size_t k = 0; k < sizeof(held) / sizeof(held[0]); k++)
        Py_DECREF(held[k]);
    Py_XDECREF(lineno);
    Py_XDECREF(when);
    Py_XDECREF(bytes_in);
    Py_XDECREF(duration);
    Py_XDECREF(rid);
    if (o == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_MemoryError, "native_chunk: no memory for an Observation");
    return o;
}

/* Python's float floor division vx // wx (Objects/floatobject.c, _float_div_mod) */
static double
py_floordiv(double vx, double wx)
{
    double mod = fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod != 0.0) {
        if ((wx < 0) != (mod < 0))
            div -= 1.0;
    }
    double floordiv;
    if (div != 0.0) {
        floordiv = floor(div);
        if (div - floordiv > 0.5)
            floordiv += 1.0;
    } else {
        floordiv = copysign(0.0, vx / wx);
    }
    return floordiv;
}

/* The line key of a kept CONNECT (see Maker) into *key (a new bytes object, or NULL when
 * the line is too long for one); then the entry `known` holds for it (a new reference),
 * with the record's values in *rec, else NULL (and NULL with an error set on a failure). */
static PyObject *
known_of(const Maker *mk, Verdicts *names, Py_ssize_t index, const char *const *tok,
         const Py_ssize_t *len, double ts, long long elapsed, long long size, const char *line,
         Py_ssize_t n, PyObject **key, KnownRecord *rec)
{
    static const int KEYED[] = {2, 3, 6, 7, 8};
    char buf[KNOWN_KEY];
    /* for 0 < ts < 2^53 (a plain_ts's are below 1e10 + 1), ts // 86400 is
     * floor(ts) // 86400: integers (0.0 and -0.0 keep Python's signed zero) */
    double day = ts > 0 && ts < 0x1p53 ? (double)((int64_t)ts / 86400)
                                       : py_floordiv(ts, 86400.0);
    Py_ssize_t at = sizeof(day);
    memcpy(buf, &day, sizeof(day));
    *key = NULL;
    for (size_t k = 0; k < sizeof(KEYED) / sizeof(KEYED[0]); k++) {
        Py_ssize_t m = len[KEYED[k]];
        if (at + 1 + m > KNOWN_KEY)
            return NULL;
        buf[at++] = ' ';
        memcpy(buf + at, tok[KEYED[k]], (size_t)m);
        at += m;
    }
    /* the key's object when `names` (a Verdicts) remembers it, else a new one it remembers */
    uint64_t h = names != NULL ? name_hash(names, buf, at) : 0;
    PyObject *seen = names != NULL ? name_get(names, h, buf, at) : NULL;
    *key = seen != NULL ? Py_NewRef(seen) : PyBytes_FromStringAndSize(buf, at);
    if (*key == NULL)
        return NULL;
    if (names != NULL && seen == NULL)
        name_put(names, h, *key);
    PyObject *entry = PyDict_GetItemWithError(mk->known, *key);
    if (entry == NULL)
        return NULL;
    char hex[2 * RECORD_ID_BYTES];
    memset(rec, 0, sizeof(*rec));
    rec->ts = ts;
    rec->line = mk->first + index + 1;
    rec->bytes_in = size;
    rec->duration = (double)elapsed / 1000.0;
    record_id_raw(line, n, rec->rid, hex);
    rec->oid = (int64_t)first_id_value(hex, sizeof(hex));
    return Py_NewRef(entry);
}

/* A run of known records being made: its entries, and its records in a buffer that grows */
typedef struct {
    PyObject *entries; /* NULL: no run open */
    Py_ssize_t at;     /* its place in todo (None until it is closed) */
    KnownRecord *records;
    Py_ssize_t size, cap;
} Run;

/* the open run's record of entry (stolen) added to it (opened in todo if need be); 0 with an
 * error set on a failure */
static int
run_add(Run *run, PyObject *todo, PyObject *entry, const KnownRecord *rec)
{
    if (run->entries == NULL) {
        run->entries = PyList_New(0);
        run->at = PyList_GET_SIZE(todo);
        run->size = 0;
        if (run->entries == NULL || PyList_Append(todo, Py_None) < 0) {
            Py_DECREF(entry);
            return 0;
        }
    }
    if (run->size == run->cap) {
        Py_ssize_t cap = run->cap ? 2 * run->cap : 256;
        KnownRecord *grown = PyMem_Realloc(run->records, cap * sizeof(KnownRecord));
        if (grown == NULL) {
            Py_DECREF(entry);
            PyErr_NoMemory();
            return 0;
        }
        run->records = grown;
        run->cap = cap;
    }
    int err = PyList_Append(run->entries, entry);
    Py_DECREF(entry);
    if (err < 0)
        return 0;
    run->records[run->size++] = *rec;
    return 1;
}

/* the open run, if any, closed: the tuple (entries, records) in its place in todo; 0 with an
 * error set on a failure */
static int
run_close(Run *run, PyObject *todo)
{
    if (run->entries == NULL)
        return 1;
    PyObject *records = PyBytes_FromStringAndSize((const char *)run->records,
                                                  run->size * (Py_ssize_t)sizeof(KnownRecord));
    PyObject *pair = records == NULL ? NULL : PyTuple_Pack(2, run->entries, records);
    Py_XDECREF(records);
    Py_CLEAR(run->entries);
    if (pair == NULL)
        return 0;
    return PyList_SetItem(todo, run->at, pair) == 0; /* steals pair */
}

/* `maker` (None or the tuple above) into mk; 0 with an error set if it is malformed */
static int
maker_of(PyObject *maker, Maker *mk)
{
    memset(mk, 0, sizeof(*mk));
    if (maker == NULL || maker == Py_None)
        return 1;
    PyObject *layout = Py_None, *known = Py_None;
    if (!PyArg_ParseTuple(maker, "OUUnO!O!O!O!O!O!|OO!:maker", &mk->cls, &mk->source,
                          &mk->format, &mk->first, &PyDict_Type, &mk->codes, &PyDict_Type,
                          &mk->words, &PyDict_Type, &mk->connect, &PyDict_Type, &mk->ips,
                          &PyDict_Type, &mk->hiers, &PyTuple_Type, &mk->kwnames, &layout,
                          &PyDict_Type, &known))
        return 0;
    if (known != Py_None)
        mk->known = known;
    if (layout == Py_None)
        return 1;
    /* (slot descriptors of cls in field order, their defaults, index of record_id) */
    PyObject *slots, *defaults;
    Py_ssize_t rid;
    if (!PyArg_ParseTuple(layout, "O!O!n:layout", &PyTuple_Type, &slots, &PyTuple_Type,
                          &defaults, &rid))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(slots);
    if (!PyType_Check(mk->cls) || n < 19 || n > MAX_SLOTS || PyTuple_GET_SIZE(defaults) != n ||
        rid < 18 || rid >= n) {
        PyErr_SetString(PyExc_ValueError, "layout: not the slots of the class");
        return 0;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *d = PyTuple_GET_ITEM(slots, k);
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type) || PyDescr_TYPE(d) != (PyTypeObject *)mk->cls ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_SetString(PyExc_ValueError, "layout: not the slots of the class");
            return 0;
        }
        mk->offset[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        mk->fallback[k] = PyTuple_GET_ITEM(defaults, k);
    }
    mk->nslots = n;
    mk->rid = rid;
    return 1;
}

/* (index, line): a line for the Python loop */
static PyObject *
handed_back(Py_ssize_t index, const char *line, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(2); /* not Py_BuildValue: a tenth of the cost */
    if (t == NULL)
        return NULL;
    PyObject *i = PyLong_FromSsize_t(index), *b = PyBytes_FromStringAndSize(line, n);
    PyTuple_SET_ITEM(t, 0, i);
    PyTuple_SET_ITEM(t, 1, b);
    if (i == NULL || b == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* `ranges` (None, or a tuple of two bytes objects) into r; 0 with an error set if bad */
static int
ranges_of(PyObject *ranges, Ranges *r)
{
    memset(r, 0, sizeof(*r));
    if (ranges == NULL || ranges == Py_None)
        return 1;
    PyObject *v4, *v6;
    if (!PyArg_ParseTuple(ranges, "SS:ranges", &v4, &v6))
        return 0;
    if (PyBytes_GET_SIZE(v4) % 8 != 0 || PyBytes_GET_SIZE(v6) % 32 != 0) {
        PyErr_SetString(PyExc_ValueError, "ranges: (v4, v6) pairs of 4- and 16-byte addresses");
        return 0;
    }
    r->v4 = (const unsigned char *)PyBytes_AS_STRING(v4);
    r->n4 = PyBytes_GET_SIZE(v4) / 8;
    r->v6 = (const unsigned char *)PyBytes_AS_STRING(v6);
    r->n6 = PyBytes_GET_SIZE(v6) / 32;
    for (Py_ssize_t k = 0; k < r->n4; k++)
        for (unsigned o = r->v4[k * 8]; o <= r->v4[k * 8 + 4]; o++)
            r->octets[o >> 3] |= (unsigned char)(1u << (o & 7));
    return 1;
}

static PyObject *
native_chunk(PyObject *self, PyObject *args)
{
    PyObject *chunk, *rejects, *markers = NULL, *ranges_arg = NULL, *maker = NULL;
    PyObject *verdicts_arg = NULL, *connects = NULL;
    int clean;
    Py_ssize_t max_line;
    Ranges ranges;
    Maker mk;

    if (!PyArg_ParseTuple(args, "SpnO!|O!OOOO!:native_chunk", &chunk, &clean, &max_line,
                          &PyDict_Type, &rejects, &PyTuple_Type, &markers, &ranges_arg, &maker,
                          &verdicts_arg, &PyDict_Type, &connects))
        return NULL;
    if (connects == NULL)
        connects = rejects;
    if (verdicts_arg != NULL && verdicts_arg != Py_None &&
        !PyObject_TypeCheck(verdicts_arg, &VerdictsType)) {
        PyErr_SetString(PyExc_TypeError, "verdicts must be None or a Verdicts");
        return NULL;
    }
    Verdicts *verdicts = verdicts_arg == NULL || verdicts_arg == Py_None
                             ? NULL
                             : (Verdicts *)verdicts_arg;
    if (ranges_arg != NULL && ranges_arg != Py_None && !PyTuple_Check(ranges_arg)) {
        PyErr_SetString(PyExc_TypeError, "ranges must be None or a (v4, v6) tuple of bytes");
        return NULL;
    }
    if (maker != NULL && maker != Py_None && !PyTuple_Check(maker)) {
        PyErr_SetString(PyExc_TypeError, "maker must be None or a tuple");
        return NULL;
    }
    if (!ranges_of(ranges_arg, &ranges) || !maker_of(maker, &mk))
        return NULL;
    /* the tuple (held by the caller's argument tuple) keeps both buffers alive */
    if (markers == NULL) {
        markers = PyTuple_New(0);
        if (markers == NULL)
            return NULL;
    } else {
        Py_INCREF(markers);
    }
    Markers marks;
    markers_of(markers, &marks);
    Run run = {NULL, 0, NULL, 0, 0}; /* the run of known records todo ends with, if any */
    Py_INCREF(chunk); /* a dict lookup may run Python code; keep the buffer alive */
    PyObject *todo = PyList_New(0);
    if (todo == NULL)
        goto fail;
    const char *data = PyBytes_AS_STRING(chunk);
    Py_ssize_t size_all = PyBytes_GET_SIZE(chunk);
    Py_ssize_t records = 0, index = 0, pos = 0;
    Line lines[2];
    int cur = 0;
    int more = next_line(data, size_all, &pos, clean, max_line, verdicts, &lines[0]);
    for (; more; cur ^= 1) {
        const Line *ln = &lines[cur];
        more = next_line(data, size_all, &pos, clean, max_line, verdicts, &lines[cur ^ 1]);
        const char *line = ln->line;
        Py_ssize_t n = ln->n;
        double ts = 0;
        long long elapsed = 0, size = 0;
        int r = 0;
        if (ln->split) {
            r = classify(ln, rejects, connects, verdicts, &marks, &ranges, &ts, &elapsed,
                         &size);
            if (r < 0)
                goto fail;
        }
        if (r == DROP) {
            records++;
            index++;
            continue;
        }
        PyObject *item = NULL;
        if (r == KEEP && mk.cls != NULL) {
            PyObject *key = NULL;
            if (mk.known != NULL && ln->connect) {
                KnownRecord rec;
                PyObject *entry = known_of(&mk, verdicts, index, ln->tok, ln->len, ts, elapsed,
                                           size, line, n, &key, &rec);
                if (entry != NULL) { /* a record of a known line key: into the run */
                    Py_DECREF(key);
                    if (!run_add(&run, todo, entry, &rec))
                        goto fail;
                    records++;
                    index++;
                    continue;
                }
                if (PyErr_Occurred()) {
                    Py_XDECREF(key);
                    goto fail;
                }
            }
            item = observation_of(&mk, index, ln->tok, ln->len, ts, elapsed, size, line, n);
            if (item != NULL && mk.known != NULL) {
                PyObject *pair = PyTuple_Pack(2, item, key != NULL ? key : Py_None);
                Py_SETREF(item, pair);
            }
            Py_XDECREF(key);
            if (item == NULL && PyErr_Occurred())
                goto fail;
            records += item != NULL; /* made here: counted here */
        }
        if (item == NULL)
            item = r == KEEP ? fields_of(index, ln->tok, ln->len, ts, elapsed, size, line, n)
                             : handed_back(index, line, n);
        if (item == NULL || !run_close(&run, todo)) { /* any other item ends a run */
            Py_XDECREF(item);
            goto fail;
        }
        int err = PyList_Append(todo, item);
        Py_DECREF(item);
        if (err < 0)
            goto fail;
        index++;
    }
    if (!run_close(&run, todo))
        goto fail;
    PyMem_Free(run.records);
    Py_DECREF(chunk);
    Py_DECREF(markers);
    return Py_BuildValue("nNn", records, todo, index);
fail:
    Py_XDECREF(run.entries);
    PyMem_Free(run.records);
    Py_DECREF(chunk);
    Py_DECREF(markers);
    Py_XDECREF(todo);
    return NULL;
}

static PyObject *
record_id(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "record_id() takes bytes");
        return NULL;
    }
    return record_id_of(PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
}

/* monitor.ids.observation_id(record_id) (the first of its identical records): the
 * BLAKE2b-64 of the id's UTF-8, big-endian, shifted right by one */
static PyObject *
observation_id(PyObject *self, PyObject *arg)
{
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "observation_id() takes str");
        return NULL;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL)
        return NULL;
    return first_id_of(s, n);
}

static PyMethodDef methods[] = {
    {"record_id", record_id, METH_O,
     "record_id(line) -> str: monitor.ids.record_id, the id of a kept line, in C."},
    {"observation_id", observation_id, METH_O,
     "observation_id(record_id) -> int: monitor.ids.observation_id(record_id), in C."},
    {"native_chunk", native_chunk, METH_VARARGS,
     "native_chunk(chunk, clean, max_line, rejects, markers=(), ranges=None, maker=None, "
     "verdicts=None, connects=rejects) -> (records, todo, lines): over the lines of a chunk, count those whose "
     "target the host filter rejected (unless their URL path holds a marker or their peer address lies in ranges); "
     "make the Observation of a kept CONNECT whose values are cached (with maker), split "
     "the other kept lines into their fields; (index, line) for the others."},
    {NULL, NULL, 0, NULL},
};

ACCEL_MODULE("_squidscan",
             "Squid native collector: the host-filter pre-pass and field split in C.");

PyMODINIT_FUNC
PyInit__squidscan(void)
{
    CONNECT_SOURCE = PyUnicode_InternFromString("connect");
    if (CONNECT_SOURCE == NULL)
        return NULL;
    if (PyType_Ready(&VerdictsType) < 0)
        return NULL;
    PyObject *capacity = PyLong_FromLong(VERDICT_SLOTS / 2);
    PyObject *names = PyLong_FromLong(NAME_SLOTS / 2);
    int bad = capacity == NULL || names == NULL ||
              PyDict_SetItemString(VerdictsType.tp_dict, "CAPACITY", capacity) < 0 ||
              PyDict_SetItemString(VerdictsType.tp_dict, "NAMES", names) < 0;
    Py_XDECREF(capacity);
    Py_XDECREF(names);
    PyType_Modified(&VerdictsType);
    if (bad)
        return NULL;
    const char *compression = "portable";
#ifdef B2_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) { /* which also means the OS saves its registers */
        b2_compress = b2_compress_avx2;
        compression = "avx2";
    }
#endif
    PyObject *m = PyModule_Create(&module);
    /* 4: native_chunk reads whole chunks; 5: it takes the ingress ranges; 6: a kept line
     * comes with its record id; 7: it takes a Verdicts table; 8: observation_id; 9: the
     * maker takes `known` (line keys); 10: known records come in runs (lists); 11: a run is
     * (entries, packed records), the maker takes no values codes; 12: a kept line's elapsed
     * time and size above MAX_COUNT, and a status above 999, go to the
     * Python loop (MAX_COUNT exported); 13: BLAKE2B names the BLAKE2b compression in use
     * ("avx2" or "portable", for the tests that compare both with hashlib); 14: a
     * Verdicts table also remembers the line keys' objects (known_of: see NameSlot), and
     * clear() forgets them too. squid.py ignores a module built before that */
    PyObject *max_count = PyLong_FromLongLong(MAX_COUNT);
    if (m != NULL && (max_count == NULL || PyModule_AddIntConstant(m, "ABI", 14) < 0 ||
                      PyModule_AddStringConstant(m, "BLAKE2B", compression) < 0 ||
                      PyModule_AddObjectRef(m, "MAX_COUNT", max_count) < 0 ||
                      PyModule_AddObjectRef(m, "Verdicts", (PyObject *)&VerdictsType) < 0)) {
        Py_XDECREF(max_count);
        Py_DECREF(m);
        return NULL;
    }
    Py_XDECREF(max_count);
    return m;
}
