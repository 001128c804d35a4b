/*
 * atomic.c - whole-or-nothing files and test crash points (see atomic.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>

#include "core/atomic.h"
#include "core/file.h"
#include "core/hash.h"

struct st_afile {
    int fd;
    char path[4096], tmp[4200];
    st_sum64 sum;
    bool wrote;
};

/* ---- crash points ----------------------------------------------------------- */

static pthread_mutex_t crash_lock = PTHREAD_MUTEX_INITIALIZER;
static long crash_at = -1, crash_count, full_at = -1, write_count;
static const char *crash_list;
static bool crash_read;

/* "N", or "R:N" for rank R only (as the MPI launcher numbers ranks): N, else -1. */
static long test_counter(const char *var)
{
    const char *at = getenv(var);
    if (!at || !*at)
        return -1;
    const char *colon = strchr(at, ':');
    if (colon) {
        const char *rank = getenv("OMPI_COMM_WORLD_RANK");
        if (!rank)
            rank = getenv("PMI_RANK");
        if (atol(rank ? rank : "0") != atol(at)) /* one process is rank 0 */
            return -1;
        at = colon + 1;
    }
    return atol(at);
}

static void crash_setup(void)
{
    crash_read = true;
    crash_list = getenv("STRATA_TEST_CRASH_LIST");
    crash_at = test_counter("STRATA_TEST_CRASH_AT");
    full_at = test_counter("STRATA_TEST_FULL_DISK_AT");
}

/* STRATA_TEST_FULL_DISK_AT=N: the N-th write of a file fails as on a full disk. */
static bool full_disk_now(void)
{
    pthread_mutex_lock(&crash_lock);
    if (!crash_read)
        crash_setup();
    bool full = full_at > 0 && ++write_count == full_at;
    pthread_mutex_unlock(&crash_lock);
    return full;
}

void st_crash_point(const char *what, const char *path)
{
    const char *slash = path ? strrchr(path, '/') : NULL;
    const char *file = slash ? slash + 1 : path ? path : "";
    pthread_mutex_lock(&crash_lock);
    if (!crash_read)
        crash_setup();
    if (crash_at < 0 && !crash_list) {
        pthread_mutex_unlock(&crash_lock);
        return;
    }
    crash_count++;
    if (crash_list) {
        FILE *f = fopen(crash_list, "a");
        const char *rank = getenv("OMPI_COMM_WORLD_RANK");
        if (f) {
            fprintf(f, "r%s %ld %s: %s\n", rank ? rank : "0", crash_count, file, what);
            fclose(f);
        }
    }
    if (crash_count == crash_at) {
        fprintf(stderr, "strata: test: crash point %ld (%s: %s): SIGKILL\n", crash_count, file,
                what);
        fflush(stderr);
        kill(getpid(), SIGKILL);
    }
    pthread_mutex_unlock(&crash_lock);
}

/* ---- files ------------------------------------------------------------------ */

static void dir_of(const char *path, char *out, size_t size)
{
    snprintf(out, size, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(out, size, ".");
    else if (slash == out)
        out[1] = '\0';
    else
        *slash = '\0';
}

st_status st_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return st_error(ST_ERR_IO, "cannot open folder '%s' to sync it: %s", dir,
                        strerror(errno));
    int rc = fsync(fd), err = errno;
    close(fd);
    /* Some file systems cannot sync a folder (EINVAL): nothing more to do there. */
    if (rc != 0 && err != EINVAL && err != EROFS)
        return st_error(ST_ERR_IO, "cannot sync folder '%s': %s", dir, strerror(err));
    return ST_OK;
}

bool st_afile_is_temp(const char *name)
{
    const char *t = strstr(name, ".tmp.");
    while (t) {
        const char *d = t + 5;
        if (*d) {
            while (*d >= '0' && *d <= '9')
                d++;
            if (!*d)
                return true;
        }
        t = strstr(t + 1, ".tmp.");
    }
    return false;
}

st_status st_afile_create(const char *path, st_afile **out)
{
    st_afile *f = calloc(1, sizeof *f);
    if (!f)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (strlen(path) >= sizeof f->path) {
        free(f);
        return st_error(ST_ERR_INVALID, "path too long: '%.64s...'", path);
    }
    snprintf(f->path, sizeof f->path, "%s", path);
    st_sum64_init(&f->sum);
    st_crash_point("create temporary file", f->path);
    f->fd = st_create_temp(path, f->tmp, sizeof f->tmp);
    if (f->fd < 0) {
        st_status s = st_error(ST_ERR_IO, "cannot create a temporary file beside '%s': %s",
                               f->path, strerror(errno));
        free(f);
        return s;
    }
    *out = f;
    return ST_OK;
}

st_status st_afile_write(st_afile *f, const void *data, size_t len)
{
    const char *c = data;
    st_sum64_add(&f->sum, data, len);
    if (full_disk_now())
        return st_error(ST_ERR_IO, "cannot write '%s': %s (test: STRATA_TEST_FULL_DISK_AT)",
                        f->path, strerror(ENOSPC));
    while (len) {
        ssize_t k = write(f->fd, c, len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return st_error(ST_ERR_IO, "cannot write '%s': %s", f->path, strerror(errno));
        }
        c += k;
        len -= (size_t)k;
        if (!f->wrote) {
            /* Once per file: a crash with part of the data written. */
            f->wrote = true;
            st_crash_point("partly written", f->path);
        }
    }
    return ST_OK;
}

void st_afile_abort(st_afile *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    unlink(f->tmp);
    free(f);
}

st_status st_afile_commit(st_afile *f, uint64_t *bytes, uint64_t *sum)
{
    st_crash_point("written, before fsync", f->path);
    if (fsync(f->fd) != 0) {
        st_status s = st_error(ST_ERR_IO, "cannot write '%s' (fsync): %s", f->path,
                               strerror(errno));
        st_afile_abort(f);
        return s;
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0) {
        st_status s = st_error(ST_ERR_IO, "cannot write '%s' (close): %s", f->path,
                               strerror(errno));
        st_afile_abort(f);
        return s;
    }
    st_crash_point("synced, before rename", f->path);
    if (rename(f->tmp, f->path) != 0) {
        st_status s = st_error(ST_ERR_IO, "cannot rename '%s' to '%s': %s", f->tmp, f->path,
                               strerror(errno));
        st_afile_abort(f);
        return s;
    }
    st_crash_point("renamed, before folder sync", f->path);
    char dir[4096];
    dir_of(f->path, dir, sizeof dir);
    if (bytes)
        *bytes = f->sum.bytes;
    if (sum)
        *sum = st_sum64_final(&f->sum);
    free(f);
    return st_fsync_dir(dir);
}

st_status st_write_file_atomic(const char *path, const void *data, size_t len, uint64_t *sum)
{
    st_afile *f = NULL;
    st_status s = st_afile_create(path, &f);
    if (s == ST_OK && (s = st_afile_write(f, data, len)) != ST_OK)
        st_afile_abort(f);
    else if (s == ST_OK)
        s = st_afile_commit(f, NULL, sum);
    return s;
}
