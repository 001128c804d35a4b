/*
 * strata.h - everything an application needs: status, devices, programs,
 * tensors, GEMM. Library code that launches kernels also includes strata/cl.h.
 */
#ifndef STRATA_STRATA_H
#define STRATA_STRATA_H

#include "strata/device.h"
#include "strata/gemm.h"
#include "strata/program.h"
#include "strata/status.h"
#include "strata/tensor.h"

#endif
