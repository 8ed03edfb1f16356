/* What the C accelerators (monitor/_*.c and monitor/collectors/_*.c, see monitor/accel.py)
 * share. */
#ifndef APIWATCH_ACCEL_H
#define APIWATCH_ACCEL_H

#include <stdint.h>

#define RECORD_ID_BYTES 12 /* a record id's (monitor.ids.record_id: 24 hex digits) */
/* the largest byte count a record may carry (monitor.observation.MAX_COUNT: 2**48) */
#define MAX_COUNT (1LL << 48)

/* `module`, the definition of accelerator module `name` (for PyModule_Create), whose
 * functions are the including file's `methods` */
#define ACCEL_MODULE(name, doc)                                                                \
    static struct PyModuleDef module = {                                                       \
        PyModuleDef_HEAD_INIT, name, doc, -1, methods, NULL, NULL, NULL, NULL,                 \
    }

/* A run of records of known line keys (monitor.observation.Known): the Squid pre-pass
 * (_squidscan.c native_chunk) gives it as the tuple (entries, records), a list of each
 * record's entry and one bytes object of these, packed (observation.RUN_RECORD), for the
 * batch builder (monitor/_batchscan.c batch_rows) to read column by column: no object per
 * record. */
typedef struct {
    double ts;
    int64_t line;
    int64_t bytes_in;
    double duration;  /* seconds */
    int64_t oid;      /* monitor.ids.observation_id(record id), its first record's */
    unsigned char rid[RECORD_ID_BYTES]; /* the record id's bytes */
    unsigned char pad[4];
} KnownRecord;

/* which of a KnownRecord's values a per-request value is (monitor.observation.KNOWN_CODES);
 * KNOWN_NONE: None */
#define KNOWN_NONE 0
#define KNOWN_TS 1
#define KNOWN_LINE 2
#define KNOWN_BYTES_IN 3
#define KNOWN_DURATION 4

#endif
