/*
 * cmd_devices.c - `strata devices`: what OpenCL devices exist, as a table or JSON.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "strata/profile.h"

static void help(void)
{
    printf("usage: strata devices [--devices CHOICE] [--json] [--profile [--refresh]]\n"
           "\n"
           "Lists every OpenCL device of every platform the ICD loader finds.\n"
           "\n"
           "  --devices CHOICE  list only these: all, gpu, cpu, accelerator, indices\n"
           "                    (0,2 or 0-3) or part of a device name; default\n"
           "                    $STRATA_DEVICES, else all\n"
           "  --json            print a JSON array instead of a table\n"
           "  --profile         also measure (or show the cached) GEMM rate and copy\n"
           "                    bandwidths the planner uses: medians of 5 runs, the\n"
           "                    GEMM's spread, and for devices on the same hardware\n"
           "                    (PoCL's CPU devices) each one's rate when all run at once\n"
           "  --refresh         with --profile: forget every cached profile of the\n"
           "                    listed devices (all shapes) and measure again; do it\n"
           "                    after the machine was busy or its drivers changed\n"
           "  -h, --help        this text\n"
           "\n"
           "Exit status: 0 listed; 2 no platform or no device matches the choice.\n");
}

static json_t *info_json(const st_device_info *d)
{
    return json_pack("{s:i, s:i, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:I, s:I, s:I, s:s, s:s, "
                     "s:b, s:b, s:s, s:s}",
                     "index", (int)d->index, "platform_index", (int)d->platform_index,
                     "platform", d->platform, "platform_version", d->platform_version,
                     "vendor", d->vendor, "name", d->name, "type", st_device_type_name(d->type),
                     "compute_units", (int)d->compute_units, "clock_mhz", (int)d->clock_mhz,
                     "global_mem_bytes", (json_int_t)d->global_mem,
                     "max_alloc_bytes", (json_int_t)d->max_alloc,
                     "local_mem_bytes", (json_int_t)d->local_mem,
                     "opencl_c_version", d->opencl_c_version, "device_version",
                     d->device_version, "fp16", d->fp16, "fp64", d->fp64, "driver_version",
                     d->driver_version, "hardware", d->hardware);
}

static void print_table(const cli_devices *d)
{
    static const char *const head[] = {"#", "platform", "vendor", "device", "type", "CUs",
                                       "MHz", "global", "max alloc", "local", "OpenCL C",
                                       "fp16", "fp64", "driver"};
    cli_table *t = cli_table_new(14);
    cli_table_add(t, head);
    for (size_t i = 0; i < d->n; i++) {
        const st_device_info *x = st_device_list_info(d->list, d->index[i]);
        char idx[16], cu[16], mhz[16], g[32], ma[32], lm[32];
        snprintf(idx, sizeof idx, "%u", x->index);
        snprintf(cu, sizeof cu, "%u", x->compute_units);
        snprintf(mhz, sizeof mhz, "%u", x->clock_mhz);
        const char *row[] = {idx, x->platform, x->vendor, x->name, st_device_type_name(x->type),
                             cu, mhz, st_format_bytes(x->global_mem, g, sizeof g),
                             st_format_bytes(x->max_alloc, ma, sizeof ma),
                             st_format_bytes(x->local_mem, lm, sizeof lm), x->opencl_c_version,
                             x->fp16 ? "yes" : "no", x->fp64 ? "yes" : "no", x->driver_version};
        cli_table_add(t, row);
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
}

int cmd_devices(int argc, char **argv)
{
    static const struct option opts[] = {{"devices", required_argument, NULL, 'd'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"profile", no_argument, NULL, 'p'},
                                         {"refresh", no_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *choice = NULL;
    bool json = false, profile = false, refresh = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hj", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            choice = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'p':
            profile = true;
            break;
        case 'r':
            refresh = true;
            break;
        case 'h':
            help();
            return CLI_OK;
        case ':':
            return cli_usage_error("devices", "option %s needs a value", argv[optind - 1]);
        default:
            return cli_unknown_option("devices", argv[optind - 1], opts);
        }
    }
    if (optind < argc)
        return cli_usage_error("devices", "unexpected argument '%s'", argv[optind]);
    if (refresh && !profile)
        return cli_usage_error("devices", "--refresh re-measures profiles: give it with --profile");

    cli_devices d;
    st_status s = cli_devices_get(choice, profile, &d);
    if (s != ST_OK) {
        cli_devices_put(&d);
        return cli_fail(s);
    }
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < d.n; i++)
            json_array_append_new(arr, info_json(st_device_list_info(d.list, d.index[i])));
        char *text = json_dumps(arr, JSON_INDENT(2));
        if (text)
            puts(text);
        free(text);
        json_decref(arr);
    } else {
        print_table(&d);
    }
    if (profile) {
        /* The planner's view of each device, for a mid-sized product (1024 x 2048 x 512). */
        st_device_profile p[ST_MAX_DEVICES];
        bool cached[ST_MAX_DEVICES] = {false};
        for (size_t i = 0; s == ST_OK && i < d.n; i++)
            s = st_device_profile_get(d.dev[i], 1024, 2048, 512, refresh ? ST_PROFILE_REFRESH : 0,
                                      &cached[i], &p[i]);
        if (s == ST_OK)
            s = st_device_profile_shared(d.dev, d.n, 1024, 2048, 512, p);
        cli_table *t = cli_table_new(9);
        const char *head[] = {"#", "device", "hardware", "GEMM GFLOPS", "spread",
                              "GFLOPS sharing", "host->device GB/s", "device->host GB/s",
                              "from"};
        cli_table_add(t, head);
        for (size_t i = 0; s == ST_OK && i < d.n; i++) {
            char c0[16], c3[32], c4[32], c5[32], c6[32], c7[32];
            snprintf(c0, sizeof c0, "%zu", d.index[i]);
            snprintf(c3, sizeof c3, "%.1f", p[i].gflops);
            snprintf(c4, sizeof c4, "%.0f%%", 100 * p[i].gflops_spread);
            if (p[i].shared_gflops > 0)
                snprintf(c5, sizeof c5, "%.1f", p[i].shared_gflops);
            else
                snprintf(c5, sizeof c5, "-");
            snprintf(c6, sizeof c6, "%.2f", p[i].h2d_gbps);
            snprintf(c7, sizeof c7, "%.2f", p[i].d2h_gbps);
            const char *row[] = {c0, p[i].name, p[i].hardware[0] ? p[i].hardware : "-", c3, c4,
                                 c5, c6, c7, cached[i] ? "cache" : "measured now"};
            cli_table_add(t, row);
        }
        if (s == ST_OK) {
            printf("\nprofiles (1024 x 2048 x 512 SGEMM, medians of 5 runs; 16 MB copies):\n");
            cli_table_print(t, stdout);
            for (size_t i = 0; i < d.n; i++)
                if (p[i].shared_gflops > 0) {
                    printf("GFLOPS sharing: each device's rate while the other devices on its "
                           "hardware run too (the planner uses it when a split gives stages to "
                           "two of them)\n");
                    break;
                }
        }
        cli_table_free(t);
    }
    cli_devices_put(&d);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
