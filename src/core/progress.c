/*
 * progress.c - the progress line (see strata/progress.h).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "core/clock.h"
#include "strata/progress.h"

static int forced = -1;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool line_on; /* a progress line is on the terminal now */

void st_progress_set_enabled(int on)
{
    forced = on;
}

bool st_progress_enabled(void)
{
    if (forced >= 0)
        return forced == 1;
    const char *v = getenv("STRATA_PROGRESS");
    if (v && strcmp(v, "0") == 0)
        return false;
    if (v && strcmp(v, "1") == 0)
        return true;
    return isatty(STDERR_FILENO) == 1;
}

/* Seconds before a line appears: half a second, or STRATA_TEST_PROGRESS_NOW
 * for the tests (which cannot wait for a slow compile). */
static double delay_s(void)
{
    const char *v = getenv("STRATA_TEST_PROGRESS_NOW");
    return v && v[0] == '1' ? 0.0 : 0.5;
}

void st_progress_begin(st_progress *p, uint64_t total, const char *fmt, ...)
{
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->what, sizeof p->what, fmt, ap);
    va_end(ap);
    p->total = total;
    p->t0 = st_now_s();
    p->drawn_at = -1;
    st_progress_update(p, 0);
}

static void elapsed(double s, char *buf, size_t size)
{
    if (s < 60)
        snprintf(buf, size, "%.0f s", s);
    else
        snprintf(buf, size, "%d min %02d s", (int)(s / 60), (int)s % 60);
}

static void draw(const st_progress *p, double now)
{
    char bar[32] = "", count[64], t[32];
    if (p->total) {
        int width = 20, full = (int)(width * (double)p->done / (double)p->total);
        if (full > width)
            full = width;
        bar[0] = '[';
        for (int i = 0; i < width; i++)
            bar[1 + i] = i < full ? '#' : '.';
        bar[width + 1] = ']';
        bar[width + 2] = ' ';
        bar[width + 3] = '\0';
        snprintf(count, sizeof count, "%llu/%llu", (unsigned long long)p->done,
                 (unsigned long long)p->total);
    } else if (p->done) {
        snprintf(count, sizeof count, "%llu", (unsigned long long)p->done);
    } else {
        count[0] = '\0';
    }
    elapsed(now - p->t0, t, sizeof t);
    /* One line: a description longer than the terminal is cut ("...") so
     * that the carriage return always gets back to its start. */
    struct winsize ws;
    int cols = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
    int tail = (int)(strlen(bar) + strlen(count) + strlen(t)) + 4;
    int room = cols - 1 - tail, len = (int)strlen(p->what);
    if (room < 10)
        room = 10;
    if (len > room)
        fprintf(stderr, "\r\033[K%.*s... %s%s%s%s", room - 3, p->what, bar, count,
                count[0] ? " | " : "| ", t);
    else
        fprintf(stderr, "\r\033[K%s %s%s%s%s", p->what, bar, count, count[0] ? " | " : "| ", t);
    fflush(stderr);
}

void st_progress_update(st_progress *p, uint64_t done)
{
    p->done = done;
    if (!st_progress_enabled())
        return;
    double now = st_now_s();
    if (now - p->t0 < delay_s() || (p->drawn_at >= 0 && now - p->drawn_at < 0.1 &&
                                    done != p->total))
        return;
    pthread_mutex_lock(&lock);
    draw(p, now);
    line_on = true;
    pthread_mutex_unlock(&lock);
    p->drawn_at = now;
    p->shown = true;
}

void st_progress_clear_line(void)
{
    pthread_mutex_lock(&lock);
    if (line_on) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        line_on = false;
    }
    pthread_mutex_unlock(&lock);
}

void st_progress_end(st_progress *p)
{
    if (p->shown)
        st_progress_clear_line();
    p->shown = false;
}

void st_progress_end_note(st_progress *p, const char *fmt, ...)
{
    if (!p->shown)
        return;
    st_progress_clear_line();
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    p->shown = false;
}
