// Precompiled header: the heavy libtorch includes shared by every torch-facing translation unit.
#pragma once
#include <torch/torch.h>
