#include "cc/xla/rmsprop_x_xla_state8.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "cc/state8.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "xla/hlo/builder/lib/arithmetic.h"
#include "xla/hlo/builder/lib/constants.h"

namespace tf_rmsprop_ops {

using tensorflow::TensorShape;
using tensorflow::XlaOpKernelContext;

BlockRows RowsOf(const TensorShape& shape) {
  if (shape.dims() < 2) return {1, shape.num_elements()};
  int64_t row = 1;
  for (int i = 1; i < shape.dims(); ++i) row *= shape.dim_size(i);
  return {shape.dim_size(0), row};
}

namespace {

// States in order with their map: ms unsigned, mom and mg signed.
std::vector<bool> StateSigned(const Variant& v) {
  std::vector<bool> out = {false};
  if (v.momentum) out.push_back(true);
  if (v.centered) out.push_back(true);
  return out;
}

// table[index] elementwise for a rank-1 F32 table (an XLA gather; indices in range).
xla::XlaOp Lookup(xla::XlaOp table, xla::XlaOp index, absl::Span<const int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  xla::GatherDimensionNumbers dn;
  dn.add_collapsed_slice_dims(0);
  dn.add_start_index_map(0);
  dn.set_index_vector_dim(1);
  return xla::Reshape(xla::Gather(table, xla::Reshape(index, {n, 1}), dn, {1}), dims);
}

xla::XlaOp TableOf(xla::XlaBuilder* b, const float* values, int64_t n) {
  return xla::ConstantR1<float>(b, absl::Span<const float>(values, n));
}

}  // namespace

absl::Status ReadXla8States(XlaOpKernelContext* ctx, const ResourceInputs& r, const Variant& v,
                            const TensorShape& var_shape, std::vector<Xla8>* states) {
  const std::vector<std::string> names = SlotNames(v);
  const BlockRows layout = RowsOf(var_shape);
  const TensorShape absmax_shape({layout.rows, BlocksPerRow(layout.row)});
  states->clear();
  for (size_t j = 0; j < r.slots.size(); ++j) {
    const bool is_absmax = j % 2 == 1;
    const tensorflow::DataType want = is_absmax ? tensorflow::DT_FLOAT : tensorflow::DT_UINT8;
    tensorflow::DataType type;
    TensorShape shape;
    TF_RETURN_IF_ERROR(ctx->GetVariableTypeAndShape(r.slots[j], &type, &shape));
    if (type != want) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot '", names[j], "' must be ", tensorflow::DataTypeString(want),
                       ", got ", tensorflow::DataTypeString(type)));
    }
    const TensorShape& expected = is_absmax ? absmax_shape : var_shape;
    if (!shape.IsSameSize(expected)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slot '", names[j], "' must have shape ", expected.DebugString(),
          is_absmax ? " (one per block of 256 elements of a row)" : " (var's)", ", got ",
          shape.DebugString()));
    }
    xla::XlaOp x;
    TF_RETURN_IF_ERROR(ctx->ReadVariableInput(r.slots[j], want, &shape, &x));
    if (is_absmax) {
      states->back().absmax = xla::Reshape(x, {layout.rows, BlocksPerRow(layout.row)});
    } else {
      states->push_back(Xla8{xla::Reshape(x, {layout.rows, layout.row}), {}});
    }
  }
  return absl::OkStatus();
}

absl::Status AssignXla8States(XlaOpKernelContext* ctx, const ResourceInputs& r,
                              const Variant& v, const TensorShape& var_shape,
                              const std::vector<Xla8>& states) {
  for (size_t j = 0; j < states.size(); ++j) {
    TF_RETURN_IF_ERROR(ctx->AssignVariable(r.slots[2 * j], tensorflow::DT_UINT8,
                                           xla::Reshape(states[j].codes, var_shape.dim_sizes())));
    TF_RETURN_IF_ERROR(
        ctx->AssignVariable(r.slots[2 * j + 1], tensorflow::DT_FLOAT, states[j].absmax));
  }
  return absl::OkStatus();
}

Xla8Step XlaUpdate8(xla::XlaBuilder* b, const Variant& v, const HyperParams<xla::XlaOp>& h,
                    xla::XlaOp grad, xla::XlaOp var, const std::vector<Xla8>& states,
                    int64_t rows, int64_t row, const std::optional<xla::XlaOp>& valid) {
  const int64_t nb = BlocksPerRow(row);
  const int64_t padded = nb * kBlock8;
  const std::vector<int64_t> blocks = {rows, nb, kBlock8};
  // [rows, row] -> [rows, nb, 256], the tail of each row's last block filled with `fill`.
  auto to_blocks = [&](xla::XlaOp x, xla::XlaOp fill) {
    if (padded != row) x = xla::PadInDim(x, fill, 1, 0, padded - row);
    return xla::Reshape(x, blocks);
  };
  auto from_blocks = [&](xla::XlaOp x) {
    x = xla::Reshape(x, {rows, padded});
    return padded == row ? x : xla::SliceInDim(x, 0, row, 1, 1);
  };
  const std::vector<bool> is_signed = StateSigned(v);
  auto map_of = [&](size_t j) -> const DynamicMap& {
    return is_signed[j] ? SignedMap() : UnsignedMap();
  };

  // Dequantize: map[code] * absmax, one float32 product.
  std::vector<xla::XlaOp> values;
  for (size_t j = 0; j < states.size(); ++j) {
    const DynamicMap& m = map_of(j);
    const xla::XlaOp codes = to_blocks(states[j].codes, xla::ConstantR0<uint8_t>(b, m.zero));
    const xla::XlaOp entry =
        Lookup(TableOf(b, m.value, 256), xla::ConvertElementType(codes, xla::S32), blocks);
    values.push_back(xla::Mul(entry, states[j].absmax, {0, 1}));
  }
  XlaState s;
  s.var = to_blocks(var, xla::ScalarLike(var, 0));
  size_t next = 0;
  s.ms = values[next++];
  if (v.momentum) s.mom = values[next++];
  if (v.centered) s.mg = values[next++];
  const XlaState updated = XlaUpdate(v, h, to_blocks(grad, xla::ScalarLike(grad, 0)), s, valid);

  // Elements of the padding: never part of a block's absmax or code.
  std::optional<xla::XlaOp> in_row;
  if (padded != row) {
    const xla::Shape index_shape = xla::ShapeUtil::MakeShape(xla::S64, blocks);
    const xla::XlaOp position = xla::Iota(b, index_shape, 1) * xla::ConstantR0<int64_t>(b, kBlock8) +
                                xla::Iota(b, index_shape, 2);
    in_row = xla::Lt(position, xla::ConstantR0<int64_t>(b, row));
  }
  std::vector<xla::XlaOp> new_values = {updated.ms};
  if (v.momentum) new_values.push_back(updated.mom);
  if (v.centered) new_values.push_back(updated.mg);

  Xla8Step out;
  out.var = from_blocks(updated.var);
  for (size_t j = 0; j < new_values.size(); ++j) {
    const DynamicMap& m = map_of(j);
    xla::XlaOp x = new_values[j];
    if (in_row) x = xla::Select(*in_row, x, xla::ZerosLike(x));
    // absmax: the integer max of the bits with the sign cleared (a NaN's bits order above
    // inf's, so NaN propagates), as BlockAbsMax.
    const xla::XlaOp magnitude = xla::And(xla::BitcastConvertType(x, xla::U32),
                                          xla::ConstantR0<uint32_t>(b, 0x7fffffffu));
    const xla::XlaOp absmax = xla::BitcastConvertType(
        xla::Reduce(magnitude, xla::ConstantR0<uint32_t>(b, 0),
                    xla::CreateScalarMaxComputation(xla::U32, b), {2}),
        xla::F32);
    // The code: the number of midpoints <= x / absmax (mid[0..254] increasing), found by
    // binary lifting; a NaN (also 0 / 0 of an all-zero block) compares false everywhere
    // and takes the zero code.
    const xla::XlaOp norm = xla::Div(x, absmax, {0, 1});
    const xla::XlaOp mids = TableOf(b, m.mid, 255);
    xla::XlaOp code = xla::Zeros(b, xla::ShapeUtil::MakeShape(xla::S32, blocks));
    for (int step = 128; step >= 1; step /= 2) {
      const xla::XlaOp candidate = code + xla::ConstantR0<int32_t>(b, step);
      const xla::XlaOp mid = Lookup(mids, candidate - xla::ConstantR0<int32_t>(b, 1), blocks);
      code = xla::Select(xla::Ge(norm, mid), candidate, code);
    }
    code = xla::Select(xla::Ne(norm, norm), xla::Broadcast(xla::ConstantR0<int32_t>(b, m.zero), blocks),
                       code);
    Xla8 q{from_blocks(xla::ConvertElementType(code, xla::U8)), absmax};
    if (valid) {  // a rejected step keeps the state's bits
      q.codes = xla::Select(*valid, q.codes, states[j].codes);
      q.absmax = xla::Select(*valid, q.absmax, states[j].absmax);
    }
    out.states.push_back(q);
  }
  return out;
}

}  // namespace tf_rmsprop_ops
