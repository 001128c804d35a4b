/*
 * cli.h - what the `strata` commands share: exit codes, error reporting,
 * opening the chosen devices.
 *
 * Exit codes: 0 success; 1 the work failed (a check, a device error); 2 bad
 * input (flags, device choice, files): the message says what to change.
 */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "strata/strata.h"

enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

/* Prints "strata: error: <last error>" and returns the exit code for s. */
int cli_fail(st_status s);
/* Prints "strata <cmd>: <message>" and a pointer to --help; returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The devices a command works on: every device chosen by --devices /
 * STRATA_DEVICES, opened. */
typedef struct cli_devices {
    st_device_list *list;
    size_t n;
    size_t index[ST_MAX_DEVICES];
    st_device *dev[ST_MAX_DEVICES];
} cli_devices;

/* Lists and selects; opens them too when `open` is set. */
st_status cli_devices_get(const char *flag, bool open, cli_devices *out);
void cli_devices_put(cli_devices *d);

/* A text table: cells are copied; columns are sized to their widest cell. */
typedef struct cli_table cli_table;
cli_table *cli_table_new(size_t columns);
void cli_table_add(cli_table *t, const char *const *cells);
void cli_table_print(const cli_table *t, FILE *f);
void cli_table_free(cli_table *t);

int cmd_devices(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
