// module.cpp -- engine._cuda_ext: every kernel of kernels/*.cu, compiled by nvcc, launched by name.
//
// The kernels register themselves (ENGINE_EXPORT_KERNEL, csrc/registry.h). How each is
// launched -- grid, block, the type of every parameter -- is described once, in Python
// (engine/cuda/launch.py: Kernel), for this module and for the NVRTC exposure alike.
// launch() takes that description's parameter types and refuses to launch when they are
// not the kernel's own, so a description that drifts from its kernel is an error here,
// never a misread argument on the GPU. Arguments arrive as Python numbers: device pointers
// as integers (CuPy's data.ptr), sizes and hyperparameters as ints and floats. Nothing
// here allocates or synchronises, and importing the module makes no CUDA call, so it
// imports on a machine without a GPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/registry.h"

namespace py = pybind11;

namespace {

// one argument, stored as the type the kernel takes (registry.h's type codes)
union Value {
    void* p;
    int i;
    long long l;
    unsigned long long q;
    float f;
    double d;
};

Value convert(const std::string& kernel, size_t index, char code, py::handle arg) {
    Value v{};
    switch (code) {
        case 'p': v.p = reinterpret_cast<void*>(arg.cast<uintptr_t>()); break;
        case 'i': {
            const long long x = arg.cast<long long>();
            if (x < -2147483648LL || x > 2147483647LL)
                throw py::value_error(kernel + ": argument " + std::to_string(index) + " = " + std::to_string(x) +
                                      " does not fit the kernel's int");
            v.i = static_cast<int>(x);
            break;
        }
        case 'l': v.l = arg.cast<long long>(); break;
        case 'Q': v.q = arg.cast<unsigned long long>(); break;
        case 'f': v.f = arg.cast<float>(); break;
        case 'd': v.d = arg.cast<double>(); break;
        default: throw std::logic_error(kernel + ": unknown type code");
    }
    return v;
}

dim3 as_dim3(const py::tuple& t) {
    return dim3(t[0].cast<unsigned>(), t[1].cast<unsigned>(), t[2].cast<unsigned>());
}

// Launch kernel `name` on `stream` with (grid, block) and args, whose types the caller's
// description gives as `signature` (one registry type code per parameter).
void launch(const std::string& name, const std::string& signature, const py::tuple& grid, const py::tuple& block,
            uintptr_t stream, const py::sequence& args) {
    const auto& registry = engine::kernel_registry();
    const auto found = registry.find(name);
    if (found == registry.end())
        throw py::value_error("engine._cuda_ext: no kernel " + name + " (defined in kernels/*.cu and followed by "
                              "ENGINE_EXPORT_KERNEL?)");
    const engine::KernelEntry& kernel = found->second;
    if (signature != kernel.signature)
        throw py::value_error(name + ": the launch description gives parameter types (" + signature +
                              ") but the kernel takes (" + kernel.signature + ")");
    if (py::len(args) != kernel.signature.size())
        throw py::value_error(name + ": expected " + std::to_string(kernel.signature.size()) + " arguments, got " +
                              std::to_string(py::len(args)));
    std::vector<Value> values(kernel.signature.size());
    std::vector<void*> pointers(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        values[i] = convert(name, i, kernel.signature[i], args[i]);
        pointers[i] = &values[i];
    }
    const cudaError_t err = kernel.launch(kernel.kernel, as_dim3(grid), as_dim3(block), pointers.data(),
                                          reinterpret_cast<cudaStream_t>(stream));
    if (err != cudaSuccess)
        throw std::runtime_error("launch of " + name + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) +
                                 ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// name -> signature of every kernel in the module
std::map<std::string, std::string> kernels() {
    std::map<std::string, std::string> out;
    for (const auto& [name, kernel] : engine::kernel_registry()) out[name] = kernel.signature;
    return out;
}

// Number of CUDA devices the runtime sees; 0 when there is no driver or no device. A CUDA
// call, so only on request, never at import.
int device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the error so later calls do not report it
        return 0;
    }
    return count;
}

}  // namespace

PYBIND11_MODULE(_cuda_ext, m) {
    m.doc() = "engine._cuda_ext: the hand-written CUDA kernels of kernels/*.cu (built with nvcc), launched by name "
              "from the launch descriptions of engine/cuda/.";
    using namespace pybind11::literals;
    m.def("launch", &launch, "launch kernel `name` on `stream`; signature: the description's parameter types",
          "name"_a, "signature"_a, "grid"_a, "block"_a, "stream"_a, "args"_a);
    m.def("kernels", &kernels, "name -> parameter type codes of every kernel in the module");
    m.def("device_count", &device_count, "CUDA devices visible to the runtime (0 without driver or device)");
}
