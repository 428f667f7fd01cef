// engine/cuda/cuda_backend.cc built for the CPU emulation.
#include "kernels/cuda/cuda_compat.h"  // first: renames the cuda namespaces
//
#include "engine/cuda/cuda_backend.cc"
