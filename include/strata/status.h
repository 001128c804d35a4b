/*
 * status.h - status codes, the last-error message and the log hook.
 *
 * Every call that can fail returns an st_status. The short code says what kind
 * of failure it was; the details (the OpenCL error name, the call, the device,
 * file:line, what to do) are in a message owned by the library and kept per
 * thread, fetched with st_last_error(). Library code never exits and never
 * prints except through the log hook below.
 *
 * Not here: OpenCL types (see strata/cl.h).
 */
#ifndef STRATA_STATUS_H
#define STRATA_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One list generates the enum and its name table. */
#define ST_STATUS_LIST(X)                                                      \
    X(ST_OK, "ok")                                                             \
    X(ST_ERR_INVALID, "invalid argument")                                      \
    X(ST_ERR_NOT_FOUND, "not found")                                           \
    X(ST_ERR_NO_DEVICE, "no usable OpenCL device")                             \
    X(ST_ERR_CL, "OpenCL error")                                               \
    X(ST_ERR_BUILD, "kernel build failed")                                     \
    X(ST_ERR_DEVICE_MEMORY, "out of device memory")                            \
    X(ST_ERR_HOST_MEMORY, "out of host memory")                                \
    X(ST_ERR_BLAS, "CLBlast error")                                            \
    X(ST_ERR_IO, "file error")                                                 \
    X(ST_ERR_FORMAT, "bad file format")                                        \
    X(ST_ERR_UNSUPPORTED, "not supported")                                     \
    X(ST_ERR_NUMERIC, "not a finite number")                                   \
    X(ST_ERR_BUSY, "in use by another process")

typedef enum st_status {
#define ST_STATUS_ENUM_(name, text) name,
    ST_STATUS_LIST(ST_STATUS_ENUM_)
#undef ST_STATUS_ENUM_
    ST_STATUS_COUNT_
} st_status;

/* "ST_ERR_CL" for ST_ERR_CL; "ST_STATUS_UNKNOWN" for values outside the enum. */
const char *st_status_name(st_status s);
/* A short description: "OpenCL error". */
const char *st_status_text(st_status s);

/* The detailed message of the last failure on this thread ("" if none). */
const char *st_last_error(void);
void st_error_clear(void);

/* Records a failure message on this thread and returns s (for `return st_error(...)`). */
st_status st_error(st_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Puts "context: " before the current message, for callers that add what they were doing. */
void st_error_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The OpenCL error name for a code of OpenCL 3.0 (and the common extensions):
 * "CL_OUT_OF_RESOURCES"; "CL_UNKNOWN_ERROR" for anything else. */
const char *st_cl_error_name(int code);

typedef enum st_log_level {
    ST_LOG_ERROR,
    ST_LOG_WARN,
    ST_LOG_INFO,
    ST_LOG_DEBUG
} st_log_level;

typedef void (*st_log_fn)(st_log_level level, const char *msg, void *user);

/* Replaces the log hook (NULL restores the default: warnings and errors to
 * stderr as "strata: warning: ...", info when STRATA_LOG=info or debug). */
void st_log_set_handler(st_log_fn fn, void *user);
void st_log(st_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif
