/* file.c - reading a whole file into memory, with messages that name it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/file.h"

st_status st_open_regular(const char *path, const char *what, FILE **out)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_INVALID,
                        "cannot open %s '%s': %s", what, path, strerror(errno));
    struct stat sb;
    const char *why = NULL;
    if (fstat(fd, &sb) != 0)
        why = strerror(errno);
    else if (S_ISDIR(sb.st_mode))
        why = "it is a folder, not a file";
    else if (!S_ISREG(sb.st_mode))
        why = "it is not a regular file (a FIFO, device or socket); give a file";
    else if (fcntl(fd, F_SETFL, 0) != 0) /* reads of a regular file block as usual */
        why = strerror(errno);
    FILE *f = why ? NULL : fdopen(fd, "rb");
    if (!f) {
        if (!why)
            why = strerror(errno);
        close(fd);
        return st_error(ST_ERR_INVALID, "cannot read %s '%s': %s", what, path, why);
    }
    *out = f;
    return ST_OK;
}

st_status st_read_text_file(const char *path, const char *what, char **out, size_t *len_out)
{
    FILE *f = NULL;
    st_status s = st_open_regular(path, what, &f);
    if (s != ST_OK)
        return s;
    char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        s = st_error(ST_ERR_IO, "cannot read %s %s: %s", what, path, strerror(errno));
        goto done;
    }
    buf = malloc((size_t)len + 1);
    if (!buf) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s %s", what, path);
        goto done;
    }
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        s = st_error(ST_ERR_IO, "cannot read %s %s: short read", what, path);
        free(buf);
        goto done;
    }
    buf[len] = '\0';
    *out = buf;
    if (len_out)
        *len_out = (size_t)len;
done:
    fclose(f);
    return s;
}

int st_create_temp(const char *path, char *tmp, size_t tmp_size)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
            struct timespec ts; /* no entropy yet: time and pid, still O_EXCL */
            clock_gettime(CLOCK_REALTIME, &ts);
            r = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
                (uint64_t)attempt;
        }
        int n = snprintf(tmp, tmp_size, "%s.tmp.%llu", path, (unsigned long long)(r % 10000000000000000000ull));
        if (n < 0 || (size_t)n >= tmp_size) {
            errno = ENAMETOOLONG;
            return -1;
        }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

static int dump_to_fd(const char *buffer, size_t size, void *data)
{
    int fd = *(int *)data;
    while (size > 0) {
        ssize_t w = write(fd, buffer, size);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buffer += w;
        size -= (size_t)w;
    }
    return 0;
}

st_status st_write_json_atomic(const char *path, json_t *j)
{
    char tmp[4400];
    int fd = st_create_temp(path, tmp, sizeof tmp);
    if (fd < 0)
        return st_error(ST_ERR_IO, "cannot create a temporary file beside '%s': %s", path,
                        strerror(errno));
    int err = 0;
    if (!j || json_dump_callback(j, dump_to_fd, &fd, JSON_INDENT(2)) != 0 ||
        dump_to_fd("\n", 1, &fd) != 0)
        err = errno ? errno : EIO;
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    if (err) {
        unlink(tmp);
        return st_error(ST_ERR_IO, "cannot write '%s': %s", path, strerror(err));
    }
    return ST_OK;
}
