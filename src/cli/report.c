/*
 * report.c - the profiler's table (`strata train --profile`, `strata bench
 * --profile`): where each device's time goes per step.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "strata/profiler.h"

st_status cli_profile_report(st_device *const *devs, size_t n, long steps, double step_ms,
                             int n_blocks, int micro_batches, FILE *f, FILE *jf)
{
    if (steps < 1)
        return ST_OK;
    uint64_t block_launches = 0;
    st_status s = ST_OK;
    for (size_t i = 0; i < n && s == ST_OK; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            seen |= devs[j] == devs[i];
        if (seen || !devs[i])
            continue;
        st_prof_summary sum;
        if ((s = st_profiler_read(devs[i], &sum)) != ST_OK)
            break;
        block_launches += sum.block_launches;
        double busy = sum.ms / (double)steps;
        fprintf(f,
                "\nprofile of %s: %.1f ms of device time per step (%.0f%% of the %.1f ms step), "
                "%.0f launches per step, over %ld step%s:\n",
                st_device_label(devs[i]), busy, step_ms > 0 ? 100.0 * busy / step_ms : 0.0,
                step_ms, (double)sum.launches / (double)steps, steps, steps == 1 ? "" : "s");
        cli_table *t = cli_table_new(6);
        const char *head[] = {"op", "launches/step", "ms/step", "share", "GB/s", "GFLOPS"};
        cli_table_add(t, head);
        for (size_t k = 0; k < sum.n; k++) {
            const st_prof_op *o = &sum.ops[k];
            char c[6][64];
            snprintf(c[0], sizeof c[0], "%s", o->name);
            snprintf(c[1], sizeof c[1], "%.1f", (double)o->launches / (double)steps);
            snprintf(c[2], sizeof c[2], "%.2f", o->ms / (double)steps);
            snprintf(c[3], sizeof c[3], "%.1f%%", sum.ms > 0 ? 100.0 * o->ms / sum.ms : 0.0);
            snprintf(c[4], sizeof c[4], "%.2f", o->ms > 0 ? o->bytes / (o->ms * 1e6) : 0.0);
            if (o->flops > 0)
                snprintf(c[5], sizeof c[5], "%.1f", o->ms > 0 ? o->flops / (o->ms * 1e6) : 0.0);
            else
                snprintf(c[5], sizeof c[5], "-");
            const char *row[6] = {c[0], c[1], c[2], c[3], c[4], c[5]};
            cli_table_add(t, row);
        }
        cli_table_print(t, f);
        cli_table_free(t);
        if (jf) {
            fprintf(jf, "{\"event\":\"profile\",\"device\":\"%s\",\"steps\":%ld,\"ms_per_step\":%.4f,"
                        "\"ops\":[",
                    st_device_get_info(devs[i])->name, steps, busy);
            for (size_t k = 0; k < sum.n; k++) {
                const st_prof_op *o = &sum.ops[k];
                fprintf(jf, "%s{\"op\":\"%s\",\"launches\":%llu,\"ms\":%.4f,\"bytes\":%.0f,"
                            "\"flops\":%.0f}",
                        k ? "," : "", o->name, (unsigned long long)o->launches, o->ms, o->bytes,
                        o->flops);
            }
            fprintf(jf, "]}\n");
        }
    }
    if (s == ST_OK && n_blocks > 0 && micro_batches > 0) {
        double per = (double)block_launches / ((double)steps * n_blocks * micro_batches);
        fprintf(f, "launches per block per micro-batch: %.0f (forward and backward)\n", per);
        if (jf)
            fprintf(jf, "{\"event\":\"profile_blocks\",\"launches_per_block_per_micro_batch\":%.2f}\n",
                    per);
    }
    return s;
}
