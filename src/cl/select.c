/*
 * select.c - turning a user's device choice ("all", "gpu", "0,2", "1-3",
 * "nvidia") into device indices. Pure: it reads the device infos only, so the
 * tests run it on made-up device tables.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "strata/device.h"

const char *st_device_spec_resolve(const char *flag)
{
    if (flag && flag[0])
        return flag;
    const char *env = getenv("STRATA_DEVICES");
    if (env && env[0])
        return env;
    return "all";
}

char *st_device_list_describe(const st_device_info *infos, size_t n_infos)
{
    size_t cap = 64 + n_infos * 400;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t len = 0;
    if (n_infos == 0)
        len += (size_t)snprintf(out, cap, "  (no OpenCL device)\n");
    for (size_t i = 0; i < n_infos && len < cap; i++) {
        char mem[32];
        len += (size_t)snprintf(out + len, cap - len, "  %u: %s [%s, %s, %s]\n", infos[i].index,
                                infos[i].name, st_device_type_name(infos[i].type),
                                infos[i].platform,
                                st_format_bytes(infos[i].global_mem, mem, sizeof mem));
    }
    return out;
}

static st_status no_match(const st_device_info *infos, size_t n, const char *what)
{
    char *table = st_device_list_describe(infos, n);
    st_status s = st_error(ST_ERR_NO_DEVICE,
                           "%s; the devices that exist are:\n%schoose with --devices (or "
                           "STRATA_DEVICES): all, gpu, cpu, accelerator, indices like 0,2 or "
                           "0-3, or part of a device name",
                           what, table ? table : "");
    free(table);
    return s;
}

static bool contains_nocase(const char *hay, const char *needle)
{
    size_t nl = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < nl && hay[i] &&
               tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == nl)
            return true;
    }
    return nl == 0;
}

/* Parses "12" or "3-5"; false when the term is not made of digits and one dash. */
static bool parse_index_range(const char *term, unsigned long *lo, unsigned long *hi)
{
    if (!isdigit((unsigned char)term[0]))
        return false;
    char *end;
    errno = 0;
    *lo = strtoul(term, &end, 10);
    if (errno)
        return false;
    if (*end == '\0') {
        *hi = *lo;
        return true;
    }
    if (*end != '-' || !isdigit((unsigned char)end[1]))
        return false;
    *hi = strtoul(end + 1, &end, 10);
    return errno == 0 && *end == '\0';
}

static st_status add_index(size_t idx, size_t *indices, size_t cap, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        if (indices[i] == idx)
            return ST_OK; /* each device once, first mention wins the order */
    if (*n == cap)
        return st_error(ST_ERR_INVALID, "more than %zu devices chosen", cap);
    indices[(*n)++] = idx;
    return ST_OK;
}

static st_status select_term(const st_device_info *infos, size_t n_infos, const char *term,
                             size_t *indices, size_t cap, size_t *n)
{
    unsigned long lo, hi;
    if (parse_index_range(term, &lo, &hi)) {
        if (lo > hi) {
            char what[400];
            snprintf(what, sizeof what, "device range '%s' runs backwards", term);
            return no_match(infos, n_infos, what);
        }
        if (hi >= n_infos) {
            char what[400];
            snprintf(what, sizeof what, "device index %lu in '%s' is out of range (%zu device%s)",
                     hi, term, n_infos, n_infos == 1 ? "" : "s");
            return no_match(infos, n_infos, what);
        }
        for (unsigned long i = lo; i <= hi; i++) {
            st_status s = add_index(i, indices, cap, n);
            if (s != ST_OK)
                return s;
        }
        return ST_OK;
    }

    int type_mask = 0;
    if (strcasecmp(term, "all") == 0)
        type_mask = ST_DEVICE_CPU | ST_DEVICE_GPU | ST_DEVICE_ACCELERATOR | ST_DEVICE_OTHER;
    else if (strcasecmp(term, "gpu") == 0)
        type_mask = ST_DEVICE_GPU;
    else if (strcasecmp(term, "cpu") == 0)
        type_mask = ST_DEVICE_CPU;
    else if (strcasecmp(term, "accelerator") == 0 || strcasecmp(term, "accel") == 0)
        type_mask = ST_DEVICE_ACCELERATOR;

    size_t found = 0;
    for (size_t i = 0; i < n_infos; i++) {
        const st_device_info *d = &infos[i];
        bool hit = type_mask ? (d->type & type_mask) != 0
                             : contains_nocase(d->name, term) || contains_nocase(d->vendor, term) ||
                                   contains_nocase(d->platform, term);
        if (!hit)
            continue;
        found++;
        st_status s = add_index(i, indices, cap, n);
        if (s != ST_OK)
            return s;
    }
    if (found == 0) {
        char what[300];
        if (type_mask)
            snprintf(what, sizeof what, "no %s device found (asked for '%s')",
                     strcasecmp(term, "all") == 0 ? "OpenCL" : term, term);
        else
            snprintf(what, sizeof what, "no device name, vendor or platform contains '%s'", term);
        return no_match(infos, n_infos, what);
    }
    return ST_OK;
}

st_status st_device_select(const st_device_info *infos, size_t n_infos, const char *spec,
                           size_t *indices, size_t cap, size_t *n_out)
{
    if (!spec)
        spec = "all";
    size_t n = 0;
    char term[256];
    const char *p = spec;
    bool any_term = false;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        if (len >= sizeof term)
            return st_error(ST_ERR_INVALID, "device choice term too long in '%s'", spec);
        if (len > 0) {
            memcpy(term, p, len);
            term[len] = '\0';
            st_status s = select_term(infos, n_infos, term, indices, cap, &n);
            if (s != ST_OK)
                return s;
            any_term = true;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    if (!any_term)
        return no_match(infos, n_infos, "the device choice is empty");
    *n_out = n;
    return ST_OK;
}
