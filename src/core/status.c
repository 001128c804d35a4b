/*
 * status.c - status names, the per-thread last-error message, the log hook.
 *
 * The message lives in a fixed per-thread buffer so that recording an error
 * never allocates (it may be reporting that the host is out of memory). A
 * message longer than the buffer (a very long build log) is cut and says so.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/progress.h"
#include "strata/status.h"

#define ST_MSG_CAP (64 * 1024)

static _Thread_local char msg_buf[ST_MSG_CAP];

static const char *const status_names[] = {
#define ST_STATUS_NAME_(name, text) #name,
    ST_STATUS_LIST(ST_STATUS_NAME_)
#undef ST_STATUS_NAME_
};

static const char *const status_texts[] = {
#define ST_STATUS_TEXT_(name, text) text,
    ST_STATUS_LIST(ST_STATUS_TEXT_)
#undef ST_STATUS_TEXT_
};

const char *st_status_name(st_status s)
{
    if ((unsigned)s >= ST_STATUS_COUNT_)
        return "ST_STATUS_UNKNOWN";
    return status_names[s];
}

const char *st_status_text(st_status s)
{
    if ((unsigned)s >= ST_STATUS_COUNT_)
        return "unknown status";
    return status_texts[s];
}

const char *st_last_error(void)
{
    return msg_buf;
}

void st_error_clear(void)
{
    msg_buf[0] = '\0';
}

static void mark_truncated(void)
{
    static const char tail[] = "\n... (message cut: too long)";
    memcpy(msg_buf + ST_MSG_CAP - sizeof tail, tail, sizeof tail);
}

st_status st_error(st_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg_buf, ST_MSG_CAP, fmt, ap);
    va_end(ap);
    if (n >= ST_MSG_CAP)
        mark_truncated();
    return s;
}

void st_error_context(const char *fmt, ...)
{
    static _Thread_local char old[ST_MSG_CAP];
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, msg_buf, strlen(msg_buf) + 1);
    if (snprintf(msg_buf, ST_MSG_CAP, "%s: %s", prefix, old) >= ST_MSG_CAP)
        mark_truncated();
}

static st_log_fn log_fn;
static void *log_user;

void st_log_set_handler(st_log_fn fn, void *user)
{
    log_fn = fn;
    log_user = user;
}

static st_log_level default_threshold(void)
{
    const char *v = getenv("STRATA_LOG");
    if (v && strcmp(v, "debug") == 0)
        return ST_LOG_DEBUG;
    if (v && strcmp(v, "info") == 0)
        return ST_LOG_INFO;
    return ST_LOG_WARN;
}

void st_log(st_log_level level, const char *fmt, ...)
{
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (log_fn) {
        log_fn(level, line, log_user);
        return;
    }
    if (level > default_threshold())
        return;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    st_progress_clear_line();
    fprintf(stderr, "strata: %s: %s\n", names[level], line);
}
