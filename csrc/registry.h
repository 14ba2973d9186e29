// registry.h -- how engine._cuda_ext finds a kernel by name, and what its parameters are.
//
// The extension build force-includes this file (nvcc -include csrc/registry.h) into every
// kernels/*.cu, so that ENGINE_EXPORT_KERNEL(name), written after each kernel, registers
// it: its name, its address and the type of every parameter, read off the kernel's own
// declaration by the compiler. bindings/module.cpp launches a kernel by name from the
// launch description in Python (engine/cuda/launch.py), after checking that the
// description's parameter types are the kernel's. NVRTC never sees this file (kernels/
// holds no host code); there ENGINE_EXPORT_KERNEL expands to nothing (common.cuh).
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <string>
#include <utility>

namespace engine {

// One code per parameter type a kernel may take; anything else does not compile.
template <typename T> struct type_code;
template <typename T> struct type_code<T*> { static constexpr char value = 'p'; };
template <> struct type_code<int> { static constexpr char value = 'i'; };
template <> struct type_code<long long> { static constexpr char value = 'l'; };
template <> struct type_code<unsigned long long> { static constexpr char value = 'Q'; };
template <> struct type_code<float> { static constexpr char value = 'f'; };
template <> struct type_code<double> { static constexpr char value = 'd'; };

using Launcher = cudaError_t (*)(const void* kernel, dim3 grid, dim3 block, void** args, cudaStream_t stream);

struct KernelEntry {
    std::string signature;  // a type code per parameter, in order
    const void* kernel;
    Launcher launch;
};

// One map for the whole module: an inline function's static is shared by every file.
inline std::map<std::string, KernelEntry>& kernel_registry() {
    static std::map<std::string, KernelEntry> registry;
    return registry;
}

#ifdef ENGINE_EMULATED_CUDA
// csrc/emulate_cuda.h runs a kernel as a host function over threads: unpack the arguments
template <typename... P, size_t... I>
void emulated_launch(void (*kernel)(P...), dim3 grid, dim3 block, void** args, std::index_sequence<I...>) {
    emu::config(kernel, grid, block)(*static_cast<P*>(args[I])...);
}
#endif

template <typename... P>
cudaError_t launch(const void* kernel, dim3 grid, dim3 block, void** args, cudaStream_t stream) {
#ifdef ENGINE_EMULATED_CUDA
    (void)stream;
    emulated_launch(reinterpret_cast<void (*)(P...)>(const_cast<void*>(kernel)), grid, block, args,
                    std::index_sequence_for<P...>{});
    return cudaGetLastError();
#else
    return cudaLaunchKernel(kernel, grid, block, args, 0, stream);
#endif
}

template <typename... P>
struct Registrar {
    Registrar(const char* name, void (*kernel)(P...)) {
        kernel_registry()[name] = KernelEntry{std::string{type_code<P>::value...},
                                              reinterpret_cast<const void*>(kernel), &launch<P...>};
    }
};

}  // namespace engine

#define ENGINE_EXPORT_KERNEL(kernel) static const ::engine::Registrar kernel##_registrar(#kernel, kernel);
