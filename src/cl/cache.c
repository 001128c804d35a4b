/*
 * cache.c - reading and writing built program binaries on disk.
 *
 * Any failure to read is a miss; any failure to write turns the cache off for
 * the rest of the process with one warning, because a broken cache must never
 * stop a run.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cl/cache.h"
#include "core/hash.h"
#include "strata/program.h"
#include "strata/status.h"

#define HEADER_BYTES 32
static const char magic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'K', 'C'};

static struct {
    pthread_mutex_t lock;
    bool configured;
    bool enabled;
    bool warned;
    char dir[4096]; /* <root>/kernels */
    st_cache_stats stats;
    unsigned long tmp_counter;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* `what` and `path` say what failed: ("cannot create", "/x/kernels"). */
static void warn_off(const char *what, const char *path, int err)
{
    cache.enabled = false;
    if (cache.warned)
        return;
    cache.warned = true;
    st_log(ST_LOG_WARN,
           "kernel cache turned off: %s %s: %s (kernels are compiled each run; set "
           "STRATA_CACHE_DIR to a writable folder, or STRATA_CACHE=0 to silence this)",
           what, path, strerror(err));
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return errno;
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

/* Called with the lock held. */
static void configure(void)
{
    if (cache.configured)
        return;
    cache.configured = true;
    cache.enabled = false;
    const char *off = getenv("STRATA_CACHE");
    if (off && strcmp(off, "0") == 0)
        return;
    const char *root = getenv("STRATA_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int n;
    if (root && root[0])
        n = snprintf(cache.dir, sizeof cache.dir, "%s/kernels", root);
    else if (xdg && xdg[0])
        n = snprintf(cache.dir, sizeof cache.dir, "%s/strata/kernels", xdg);
    else if (home && home[0])
        n = snprintf(cache.dir, sizeof cache.dir, "%s/.cache/strata/kernels", home);
    else {
        warn_off("no folder:", "neither STRATA_CACHE_DIR, XDG_CACHE_HOME nor HOME is set", ENOENT);
        return;
    }
    if (n >= (int)sizeof cache.dir) {
        warn_off("cannot use", "the cache folder (path too long)", ENAMETOOLONG);
        return;
    }
    int err = mkdir_p(cache.dir);
    if (err) {
        warn_off("cannot create", cache.dir, err);
        return;
    }
    cache.enabled = true;
}

static void entry_path(const char *key, char *path, size_t size)
{
    snprintf(path, size, "%s/%016" PRIx64 ".clbin", cache.dir, st_fnv64_str(ST_FNV64_INIT, key));
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t checksum(const char *key, size_t key_len, const unsigned char *bin, size_t len)
{
    return st_fnv64(st_fnv64(ST_FNV64_INIT, key, key_len), bin, len);
}

/* Reads and checks an entry; returns the payload or NULL. */
static unsigned char *read_entry(const char *path, const char *key, size_t *len_out,
                                 bool *present)
{
    *present = false;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    *present = true;
    unsigned char *payload = NULL;
    char *stored_key = NULL;
    unsigned char hdr[HEADER_BYTES];
    size_t key_len = strlen(key);
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || fread(hdr, 1, HEADER_BYTES, f) != HEADER_BYTES)
        goto bad;
    if (memcmp(hdr, magic, sizeof magic) != 0 || get_u32(hdr + 8) != ST_CACHE_FORMAT_VERSION)
        goto bad;
    uint64_t klen = get_u32(hdr + 12);
    uint64_t plen = get_u64(hdr + 16);
    uint64_t sum = get_u64(hdr + 24);
    /* The file must be exactly header + key + payload: no more, no less. */
    if (klen != key_len || plen == 0 || plen > (uint64_t)st.st_size ||
        (uint64_t)st.st_size != HEADER_BYTES + klen + plen)
        goto bad;
    stored_key = malloc(key_len);
    payload = malloc(plen);
    if (!stored_key || !payload)
        goto bad;
    if (fread(stored_key, 1, key_len, f) != key_len || fread(payload, 1, plen, f) != plen)
        goto bad;
    if (memcmp(stored_key, key, key_len) != 0) {
        /* A hash collision with another program: not corrupt, just not ours. */
        *present = false;
        goto bad;
    }
    if (checksum(key, key_len, payload, plen) != sum)
        goto bad;
    free(stored_key);
    fclose(f);
    *len_out = plen;
    return payload;
bad:
    free(stored_key);
    free(payload);
    fclose(f);
    return NULL;
}

st_cache_result st_cache_lookup(const char *key, unsigned char **bin, size_t *len)
{
    pthread_mutex_lock(&cache.lock);
    configure();
    if (!cache.enabled) {
        pthread_mutex_unlock(&cache.lock);
        return ST_CACHE_OFF;
    }
    char path[4200];
    entry_path(key, path, sizeof path);
    bool present;
    unsigned char *payload = read_entry(path, key, len, &present);
    st_cache_result r = ST_CACHE_ABSENT;
    if (payload) {
        *bin = payload;
        r = ST_CACHE_FOUND;
    } else if (present) {
        st_log(ST_LOG_INFO, "kernel cache entry %s is damaged: rebuilding it", path);
        unlink(path);
        cache.stats.rejected++;
        r = ST_CACHE_CORRUPT;
    }
    pthread_mutex_unlock(&cache.lock);
    return r;
}

static bool write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        len -= (size_t)w;
    }
    return true;
}

void st_cache_store(const char *key, const unsigned char *bin, size_t len)
{
    pthread_mutex_lock(&cache.lock);
    configure();
    if (!cache.enabled || len == 0) {
        pthread_mutex_unlock(&cache.lock);
        return;
    }
    char path[4200], tmp[4300];
    entry_path(key, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%lu", path, (long)getpid(), cache.tmp_counter++);

    size_t key_len = strlen(key);
    unsigned char hdr[HEADER_BYTES];
    memcpy(hdr, magic, sizeof magic);
    put_u32(hdr + 8, ST_CACHE_FORMAT_VERSION);
    put_u32(hdr + 12, (uint32_t)key_len);
    put_u64(hdr + 16, len);
    put_u64(hdr + 24, checksum(key, key_len, bin, len));

    /* Written whole to a private name, then renamed: readers (other processes
     * too) see the old entry or the new one, never a half-written file. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        cache.stats.write_failures++;
        warn_off("cannot write", tmp, errno);
        pthread_mutex_unlock(&cache.lock);
        return;
    }
    bool ok = write_all(fd, hdr, sizeof hdr) && write_all(fd, key, key_len) &&
              write_all(fd, bin, len);
    int err = ok ? 0 : (errno ? errno : EIO);
    if (close(fd) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        err = errno;
    }
    if (ok) {
        cache.stats.writes++;
    } else {
        unlink(tmp);
        cache.stats.write_failures++;
        warn_off("cannot write", path, err);
    }
    pthread_mutex_unlock(&cache.lock);
}

void st_cache_count_hit(void)
{
    pthread_mutex_lock(&cache.lock);
    cache.stats.hits++;
    pthread_mutex_unlock(&cache.lock);
}

void st_cache_count_miss(void)
{
    pthread_mutex_lock(&cache.lock);
    cache.stats.misses++;
    pthread_mutex_unlock(&cache.lock);
}

void st_cache_reject(const char *key)
{
    pthread_mutex_lock(&cache.lock);
    char path[4200];
    entry_path(key, path, sizeof path);
    unlink(path);
    cache.stats.rejected++;
    pthread_mutex_unlock(&cache.lock);
}

st_cache_stats st_cache_get_stats(void)
{
    pthread_mutex_lock(&cache.lock);
    st_cache_stats s = cache.stats;
    pthread_mutex_unlock(&cache.lock);
    return s;
}

void st_cache_reset(void)
{
    pthread_mutex_lock(&cache.lock);
    cache.configured = false;
    cache.enabled = false;
    cache.warned = false;
    memset(&cache.stats, 0, sizeof cache.stats);
    pthread_mutex_unlock(&cache.lock);
}

const char *st_cache_dir(void)
{
    pthread_mutex_lock(&cache.lock);
    configure();
    const char *d = cache.enabled ? cache.dir : NULL;
    pthread_mutex_unlock(&cache.lock);
    return d;
}

void st_cache_device_file(const st_device *dev, const char *folder, const char *extra,
                          char *out, size_t size)
{
    out[0] = '\0';
    const char *kdir = st_cache_dir();
    if (!kdir)
        return;
    /* Siblings of the kernel folder under the cache root. */
    char root[4096];
    snprintf(root, sizeof root, "%s", kdir);
    char *slash = strrchr(root, '/');
    if (slash && strcmp(slash, "/kernels") == 0)
        *slash = '\0';
    const st_device_info *info = st_device_get_info(dev);
    char key[1536];
    snprintf(key, sizeof key, "%s|%s|%s|%s|%s", info->platform, info->name,
             info->driver_version, info->platform_version, extra ? extra : "");
    unsigned long long h = 1469598103934665603ull;
    for (const char *c = key; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", root, folder);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return;
    snprintf(out, size, "%s/%016llx.json", dir, h);
}
