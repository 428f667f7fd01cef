// transport/ipc_sender.cc built for the CPU emulation.
#include "kernels/cuda/cuda_compat.h"  // first: emulated CUDA
//
#include "transport/ipc_sender.cc"
