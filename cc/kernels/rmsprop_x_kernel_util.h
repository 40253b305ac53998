// What both CPU OpKernel shells share: variable pre-checks, hyperparameter reads, type maps.
#ifndef TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_KERNEL_UTIL_H_
#define TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_KERNEL_UTIL_H_

#include <limits>
#include <string>
#include <vector>

#include "cc/cpu/rmsprop_x_cpu.h"
#include "cc/ops/rmsprop_x_attrs.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/refcount.h"

namespace tensorflow {
class Var;
}  // namespace tensorflow

namespace tf_rmsprop_ops {

// Maps TensorFlow's element types onto the bit-compatible types of cc/cpu/.
template <typename T> struct CpuStorageOf { using type = T; };
template <> struct CpuStorageOf<Eigen::half> { using type = cpu::Half; };
template <> struct CpuStorageOf<Eigen::bfloat16> { using type = cpu::BFloat16; };
template <typename T> using CpuStorage = typename CpuStorageOf<T>::type;

template <typename T>
CpuStorage<T>* CpuData(tensorflow::Tensor* t) {
  static_assert(sizeof(CpuStorage<T>) == sizeof(T), "storage types must be bit-compatible");
  return reinterpret_cast<CpuStorage<T>*>(t->flat<T>().data());
}
template <typename T>
const CpuStorage<T>* CpuData(const tensorflow::Tensor& t) {
  return reinterpret_cast<const CpuStorage<T>*>(t.flat<T>().data());
}

// var and the enabled slots as raw pointers (mom/mg null when their feature is off), in the
// order ListVariableInputs gives them.
template <typename T>
struct StatePointers {
  CpuStorage<T>* var;
  CpuStorage<T>* ms;
  CpuStorage<T>* mom;
  CpuStorage<T>* mg;
  // The same element offset into var and every enabled slot.
  StatePointers At(int64_t off) const {
    return {var + off, ms + off, mom ? mom + off : nullptr, mg ? mg + off : nullptr};
  }
};
// `slots`: the enabled slots in SlotNames order (ms, then mom, then mg).
template <typename T>
StatePointers<T> StateOf(const Variant& variant, tensorflow::Tensor* var,
                         tensorflow::Tensor* const* slots) {
  int next = 1;
  CpuStorage<T>* mom = variant.momentum ? CpuData<T>(slots[next++]) : nullptr;
  CpuStorage<T>* mg = variant.centered ? CpuData<T>(slots[next++]) : nullptr;
  return {CpuData<T>(var), CpuData<T>(slots[0]), mom, mg};
}
template <typename T>
StatePointers<T> StateOf(const Variant& variant, std::vector<tensorflow::Tensor>* tensors) {
  tensorflow::Tensor* slots[3] = {};
  for (size_t i = 1; i < tensors->size() && i <= 3; ++i) slots[i - 1] = &(*tensors)[i];
  return StateOf<T>(variant, &(*tensors)[0], slots);
}

// Flat state: the same pointers with the slots moved `offset` elements into their buffers.
template <typename T>
StatePointers<T> AtSlotOffset(StatePointers<T> s, int64_t offset) {
  s.ms += offset;
  if (s.mom != nullptr) s.mom += offset;
  if (s.mg != nullptr) s.mg += offset;
  return s;
}

// The resource inputs of an op instance ("var", then the slots) with their flat indices.
struct VariableInputs {
  std::vector<int> ids;
  std::vector<std::string> names;
  // 8-bit state: slot inputs alternate codes (uint8) and absmax (float32).
  int state_bits = 32;
  // The dtype input i must hold, given the op's T.
  tensorflow::DataType DtypeOf(size_t i, tensorflow::DataType t) const {
    if (state_bits != 8 || i == 0) return t;
    return i % 2 == 1 ? tensorflow::DT_UINT8 : tensorflow::DT_FLOAT;
  }
};
VariableInputs ListVariableInputs(const Variant& variant);

// Looks up every variable before any lock is taken and checks it exists, is initialised
// and holds `dtype`. TF's locking and copy helpers assume the dtype matches (a mismatch is
// a fatal CHECK there), so this must run first.
absl::Status CheckVariablesBeforeUpdate(tensorflow::OpKernelContext* ctx,
                                        const VariableInputs& vars, tensorflow::DataType dtype);

// One variable input (`name` in messages): looked up (into `var`, also when a later check
// fails), then checked to be initialised and to hold `dtype`.
absl::Status LookupVariable(tensorflow::OpKernelContext* ctx, int input, const std::string& name,
                            tensorflow::DataType dtype,
                            tensorflow::core::RefCountPtr<tensorflow::Var>* var);

// Checks the five hyperparameter inputs are scalars.
absl::Status CheckScalarInputs(tensorflow::OpKernelContext* ctx, const InputIndex& in);

// Reads the five hyperparameters once (inputs on the host: HostMemory on a GPU), checks their
// values as T holds them (CheckHyperParams) and folds them with the variant in compute
// precision. Call after CheckScalarInputs, before anything is written.
template <typename T>
absl::Status ReadCoefficients(tensorflow::OpKernelContext* ctx, const InputIndex& in,
                              const Variant& variant,
                              Coefficients<cpu::ComputeType<CpuStorage<T>>>* k) {
  using C = cpu::ComputeType<CpuStorage<T>>;  // exact: half types widen to float32
  auto read = [&](int i) { return static_cast<C>(ctx->input(i).scalar<T>()()); };
  const HyperParams<C> h{read(in.lr()), read(in.rho()), read(in.momentum()), read(in.epsilon()),
                         read(in.weight_decay())};
  const absl::Status valid = CheckHyperParams(
      HyperParams<double>{h.lr, h.rho, h.momentum, h.epsilon, h.weight_decay},
      std::numeric_limits<C>::min());
  if (!valid.ok()) return valid;
  *k = MakeCoefficients(variant, h);
  return absl::OkStatus();
}

// Checks a slot (`name`) has var's shape.
absl::Status CheckSlotShape(const std::string& name, const tensorflow::TensorShape& var,
                            const tensorflow::TensorShape& slot);

// Checks every slot tensor has var's shape.
absl::Status CheckSlotShapes(const VariableInputs& vars,
                             const std::vector<tensorflow::Tensor>& tensors);

}  // namespace tf_rmsprop_ops

#endif  // TF_RMSPROP_OPS_CC_KERNELS_RMSPROP_X_KERNEL_UTIL_H_
