// XLA lowering of SparseApplyRMSpropX: sort, segment-sum, gather, update, scatter.
//
// Same results as the CPU kernel, duplicates included: the indices are stably sorted with
// their positions, equal indices form one segment whose gradient rows are summed (in input
// order), each segment's row is gathered, updated once and scattered back. Temporaries are
// [N, row] sized, never table sized. XLA cannot raise at run time: an index outside
// [0, rows) is mapped to the row `rows`, which every XLA scatter skips, so such entries
// change nothing (the Python layer validates indices where it can).
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/xla/rmsprop_x_xla_math.h"
#include "cc/state8.h"
#include "cc/xla/rmsprop_x_xla_state8.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "xla/hlo/builder/lib/arithmetic.h"
#include "xla/hlo/builder/lib/comparators.h"
#include "xla/hlo/builder/lib/constants.h"

namespace tf_rmsprop_ops {
namespace {

using tensorflow::TensorShape;
using tensorflow::XlaOpKernelContext;

// table[rows[i], :] for a [R, D] table and [N] rows (XLA clamps out-of-range rows).
xla::XlaOp GatherRows(xla::XlaOp table, xla::XlaOp rows, int64_t n, int64_t d, bool sorted) {
  xla::GatherDimensionNumbers dn;
  dn.add_offset_dims(1);
  dn.add_collapsed_slice_dims(0);
  dn.add_start_index_map(0);
  dn.set_index_vector_dim(1);
  return xla::Gather(table, xla::Reshape(rows, {n, 1}), dn, {1, d}, sorted);
}

xla::ScatterDimensionNumbers RowScatterDims() {
  xla::ScatterDimensionNumbers dn;
  dn.add_update_window_dims(1);
  dn.add_inserted_window_dims(0);
  dn.add_scatter_dims_to_operand_dims(0);
  dn.set_index_vector_dim(1);
  return dn;
}

// table[rows[i], :] = combine(table[rows[i], :], updates[i, :]); out-of-range rows skipped.
xla::XlaOp ScatterRows(xla::XlaOp table, xla::XlaOp rows, xla::XlaOp updates, int64_t n,
                       const xla::XlaComputation& combine, bool sorted, bool unique) {
  return xla::Scatter(table, xla::Reshape(rows, {n, 1}), updates, combine, RowScatterDims(),
                      sorted, unique);
}

// (old_0..old_k-1, new_0..new_k-1) -> (new_0..new_k-1): a plain overwrite of k arrays of
// the given element types.
xla::XlaComputation TakeUpdates(xla::XlaBuilder* b, const std::vector<xla::PrimitiveType>& types) {
  auto sub = b->CreateSubBuilder("take_update");
  const int k = static_cast<int>(types.size());
  std::vector<xla::XlaOp> updates;
  for (int i = 0; i < 2 * k; ++i) {
    const xla::Shape scalar = xla::ShapeUtil::MakeShape(types[i % k], {});
    xla::XlaOp p = xla::Parameter(sub.get(), i, scalar, absl::StrCat(i < k ? "old" : "new", i % k));
    if (i >= k) updates.push_back(p);
  }
  if (k > 1) xla::Tuple(sub.get(), updates);
  return sub->BuildAndNoteError();
}

xla::XlaComputation TakeUpdates(xla::XlaBuilder* b, xla::PrimitiveType type, int k) {
  return TakeUpdates(b, std::vector<xla::PrimitiveType>(k, type));
}

// tables[j][rows[i], :] = updates[j][i, :] for every j, as ONE variadic scatter: one pass
// over the rows, and no sibling scatters sharing `rows` (XLA:CPU's multi-output fusion
// would merge siblings into a loop fusion that its emitter cannot compile). The tables
// share their shape; `types` are their element types.
std::vector<xla::XlaOp> ScatterRowsBack(xla::XlaBuilder* b, const std::vector<xla::XlaOp>& tables,
                                        xla::XlaOp rows, const std::vector<xla::XlaOp>& updates,
                                        int64_t n, const std::vector<xla::PrimitiveType>& types) {
  const int k = static_cast<int>(tables.size());
  const xla::XlaOp scattered =
      xla::Scatter(tables, xla::Reshape(rows, {n, 1}), updates, TakeUpdates(b, types),
                   RowScatterDims(), /*indices_are_sorted=*/true, /*unique_indices=*/false);
  if (k == 1) return {scattered};
  std::vector<xla::XlaOp> out;
  for (int j = 0; j < k; ++j) out.push_back(xla::GetTupleElement(scattered, j));
  return out;
}

std::vector<xla::XlaOp> ScatterRowsBack(xla::XlaBuilder* b, const std::vector<xla::XlaOp>& tables,
                                        xla::XlaOp rows, const std::vector<xla::XlaOp>& updates,
                                        int64_t n, xla::PrimitiveType type) {
  return ScatterRowsBack(b, tables, rows, updates, n,
                         std::vector<xla::PrimitiveType>(tables.size(), type));
}

// Inclusive prefix sum of a rank-1 int32 array in log2(n) shifted adds.
xla::XlaOp InclusivePrefixSum(xla::XlaOp x, int64_t n) {
  const xla::XlaOp zero = xla::ScalarLike(x, 0);
  for (int64_t shift = 1; shift < n; shift *= 2) {
    x = x + xla::PadInDim(xla::SliceInDim(x, 0, n - shift, 1, 0), zero, 0, shift, 0);
  }
  return x;
}

// What steps 1-4 below give: each segment's summed gradient row and its var row.
struct Segments {
  xla::XlaOp summed;       // [n, d] in compute precision; rows past the segments are 0
  xla::XlaOp segment_row;  // [n]: the row of each segment, `rows` where none (skipped)
};

class SparseApplyRMSpropXXlaOp : public tensorflow::XlaOpKernel {
 public:
  explicit SparseApplyRMSpropXXlaOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    OP_REQUIRES_OK(c, ParseVariant(c, &variant_));
    OP_REQUIRES_OK(c, c->GetAttr("slot_offset", &slot_offset_));
    OP_REQUIRES_OK(c, CheckSlotOffset(variant_, slot_offset_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const InputIndex in(static_cast<int>(SlotNames(variant_).size()));
    const tensorflow::DataType dtype = ctx->input_type(in.grad());
    const bool eight = variant_.state_bits == 8;
    OP_REQUIRES(ctx, !eight || dtype == tensorflow::DT_HALF || dtype == tensorflow::DT_BFLOAT16 ||
                         dtype == tensorflow::DT_FLOAT,
                absl::InvalidArgumentError(absl::StrCat(
                    "state_bits=8 needs a half, bfloat16 or float32 variable, got ",
                    tensorflow::DataTypeString(dtype))));
    const xla::PrimitiveType compute = ComputeTypeFor(dtype);
    TensorShape var_shape;
    XlaState state;
    std::vector<Xla8> states8;
    ResourceInputs r{in.var(), {}};
    for (int i = 0; i < in.num_slots; ++i) r.slots.push_back(in.slot(i));
    if (eight) {
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(in.var(), dtype, &var_shape, &state.var));
      state.var = xla::ConvertElementType(state.var, compute);
      OP_REQUIRES(ctx, var_shape.dims() >= 2,
                  absl::InvalidArgumentError(absl::StrCat(
                      "state_bits=8: the sparse update needs var of rank >= 2 (a row is its own "
                      "blocks; a rank-1 variable is one row), got shape ",
                      var_shape.DebugString())));
      OP_REQUIRES_OK(ctx, ReadXla8States(ctx, r, variant_, var_shape, &states8));
    } else if (slot_offset_ >= 0) {  // flat state: var's range of each buffer
      OP_REQUIRES_OK(ctx, ReadXlaState(ctx, ResourceInputs{in.var(), {}}, variant_, dtype,
                                       compute, &var_shape, &state));
      OP_REQUIRES_OK(ctx, ReadFlatSlots(ctx, in, dtype, compute, var_shape, &state));
    } else {
      OP_REQUIRES_OK(ctx, ReadXlaState(ctx, in, variant_, dtype, compute, &var_shape, &state));
    }
    const TensorShape indices_shape = ctx->InputShape(in.indices());
    const TensorShape grad_shape = ctx->InputShape(in.grad());
    OP_REQUIRES(ctx, var_shape.dims() >= 1,
                absl::InvalidArgumentError("var must have rank >= 1 to be updated by rows, got a scalar"));
    OP_REQUIRES(ctx, indices_shape.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat("indices must be a vector, got shape ",
                                                        indices_shape.DebugString())));
    OP_REQUIRES(ctx, grad_shape.dims() >= 1 && grad_shape.dim_size(0) == indices_shape.dim_size(0),
                absl::InvalidArgumentError(absl::StrCat(
                    "grad must have shape [N] + var.shape[1:] with N = ", indices_shape.dim_size(0),
                    " indices, got ", grad_shape.DebugString())));
    TensorShape var_row = var_shape, grad_row = grad_shape;
    var_row.RemoveDim(0);
    grad_row.RemoveDim(0);
    OP_REQUIRES(ctx, var_row.IsSameSize(grad_row),
                absl::InvalidArgumentError(absl::StrCat(
                    "grad rows must have shape var.shape[1:] = ", var_row.DebugString(), ", got ",
                    grad_row.DebugString())));
    auto k = ReadXlaHyperParams(ctx, in, compute);
    OP_REQUIRES_OK(ctx, k.status());

    const int64_t n = indices_shape.dim_size(0);
    const int64_t rows = var_shape.dim_size(0);
    const int64_t d = var_row.num_elements();
    if (n == 0 || rows == 0 || d == 0) return;  // nothing can be touched

    xla::XlaBuilder* b = ctx->builder();
    Segments seg;
    OP_REQUIRES_OK(ctx, SegmentsOf(ctx, in, n, rows, d, compute, &seg));
    if (eight) return Compile8(ctx, r, k->h, k->valid, seg, var_shape, state.var, states8, n, rows, d, dtype);

    // 5. One update per touched row, scattered back in place.
    const XlaState tables =
        MapState(variant_, state, [&](xla::XlaOp x) { return xla::Reshape(x, {rows, d}); });
    const XlaState gathered = MapState(variant_, tables, [&](xla::XlaOp x) {
      return GatherRows(x, seg.segment_row, n, d, /*sorted=*/true);
    });
    XlaState updated = XlaUpdate(variant_, k->h, seg.summed, gathered, k->valid);
    XlaState result = tables;
    std::vector<xla::XlaOp> table_list, update_list;
    for (const xla::XlaOp* x : StateOps(variant_, &result)) table_list.push_back(*x);
    for (const xla::XlaOp* x : StateOps(variant_, &updated)) update_list.push_back(*x);
    const std::vector<xla::XlaOp> written =
        ScatterRowsBack(b, table_list, seg.segment_row, update_list, n, compute);
    const std::vector<xla::XlaOp*> outputs = StateOps(variant_, &result);
    for (size_t j = 0; j < outputs.size(); ++j) {
      *outputs[j] = xla::Reshape(written[j], var_shape.dim_sizes());
    }
    if (slot_offset_ >= 0) {
      OP_REQUIRES_OK(ctx, AssignXlaState(ctx, ResourceInputs{in.var(), {}}, variant_, dtype,
                                         result));
      OP_REQUIRES_OK(ctx, AssignFlatSlots(ctx, in, dtype, var_shape, result));
      return;
    }
    OP_REQUIRES_OK(ctx, AssignXlaState(ctx, in, variant_, dtype, result));
  }

 private:
  // Flat state: each slot is var's range of a rank-1 buffer (the kernel's checks).
  absl::Status ReadFlatSlots(XlaOpKernelContext* ctx, const InputIndex& in,
                             tensorflow::DataType dtype, xla::PrimitiveType compute,
                             const TensorShape& var_shape, XlaState* state) {
    const std::vector<std::string> names = SlotNames(variant_);
    const std::vector<xla::XlaOp*> slots = StateOps(variant_, state);
    const int64_t size = var_shape.num_elements();
    buffers_.assign(in.num_slots, xla::XlaOp());
    for (int i = 0; i < in.num_slots; ++i) {
      TensorShape shape;
      TF_RETURN_IF_ERROR(ctx->ReadVariableInput(in.slot(i), dtype, &shape, &buffers_[i]));
      if (shape.dims() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the flat '", names[i], "' buffer must be rank 1, got shape ", shape.DebugString()));
      }
      if (slot_offset_ + size > shape.num_elements()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "var (", size, " elements at slot_offset = ", slot_offset_, ") does not fit in the "
            "flat '", names[i], "' buffer of ", shape.num_elements(), " elements"));
      }
      *slots[i + 1] = xla::ConvertElementType(
          xla::Reshape(xla::SliceInDim(buffers_[i], slot_offset_, slot_offset_ + size, 1, 0),
                       var_shape.dim_sizes()),
          compute);
    }
    return absl::OkStatus();
  }

  // Writes the updated slots back into their ranges (DynamicUpdateSlice: in place in XLA).
  absl::Status AssignFlatSlots(XlaOpKernelContext* ctx, const InputIndex& in,
                               tensorflow::DataType dtype, const TensorShape& var_shape,
                               XlaState& result) {
    xla::PrimitiveType storage;
    TF_RETURN_IF_ERROR(tensorflow::DataTypeToPrimitiveType(dtype, &storage));
    const std::vector<xla::XlaOp*> slots = StateOps(variant_, &result);
    for (int i = 0; i < in.num_slots; ++i) {
      const xla::XlaOp flat = xla::ConvertElementType(
          xla::Reshape(*slots[i + 1], {var_shape.num_elements()}), storage);
      TF_RETURN_IF_ERROR(ctx->AssignVariable(
          in.slot(i), dtype,
          xla::DynamicUpdateSlice(buffers_[i], flat,
                                  {xla::ConstantR0<int64_t>(ctx->builder(), slot_offset_)})));
    }
    return absl::OkStatus();
  }

  // Steps 1-4: the segments of equal indices, their summed gradient rows and var rows.
  absl::Status SegmentsOf(XlaOpKernelContext* ctx, const InputIndex& in, int64_t n, int64_t rows,
                          int64_t d, xla::PrimitiveType compute, Segments* out) {
    xla::XlaBuilder* b = ctx->builder();
    const xla::XlaOp indices = ctx->Input(in.indices());
    xla::PrimitiveType index_type;
    TF_RETURN_IF_ERROR(tensorflow::DataTypeToPrimitiveType(ctx->input_type(in.indices()),
                                                           &index_type));
    // 1. Stable sort of the indices with their positions: equal indices become adjacent,
    //    in input order.
    const xla::XlaOp position = xla::Iota(b, xla::S32, n);
    const xla::XlaOp sorted = xla::Sort({indices, position},
                                        xla::CreateScalarLtComputation({index_type, xla::S32}, b),
                                        /*dimension=*/0, /*is_stable=*/true);
    const xla::XlaOp sorted_index = xla::GetTupleElement(sorted, 0);
    const xla::XlaOp perm = xla::GetTupleElement(sorted, 1);
    // 2. Segments: a new one starts wherever the sorted index changes.
    const xla::XlaOp previous =
        xla::PadInDim(xla::SliceInDim(sorted_index, 0, n - 1, 1, 0), xla::ScalarLike(indices, 0),
                      0, 1, 0);
    const xla::XlaOp is_head = xla::Or(xla::Eq(position, xla::ScalarLike(position, 0)),
                                       xla::Ne(sorted_index, previous));
    const xla::XlaOp segment =
        InclusivePrefixSum(xla::ConvertElementType(is_head, xla::S32), n) - xla::ScalarLike(position, 1);
    // 3. The summed gradient of each segment (segments number at most n).
    const xla::XlaOp grad = xla::ConvertElementType(
        xla::Reshape(ctx->Input(in.grad()), {n, d}), compute);
    out->summed =
        ScatterRows(xla::Zeros(b, xla::ShapeUtil::MakeShape(compute, {n, d})), segment,
                    GatherRows(grad, perm, n, d, /*sorted=*/false), n,
                    xla::CreateScalarAddComputation(compute, b), /*sorted=*/true, /*unique=*/false);
    // 4. The var row of each segment; unused segments and out-of-range indices get `rows`,
    //    which the final scatter skips.
    const xla::XlaOp out_of_range = xla::ScalarLike(indices, rows);
    const xla::XlaOp valid = xla::And(xla::Ge(sorted_index, xla::ScalarLike(indices, 0)),
                                      xla::Lt(sorted_index, out_of_range));
    const xla::XlaOp head_target =
        xla::Select(is_head, segment, xla::Broadcast(xla::ScalarLike(position, n), {n}));
    out->segment_row = xla::Reshape(
        ScatterRows(xla::Broadcast(out_of_range, {n, 1}), head_target,
                    xla::Reshape(xla::Select(valid, sorted_index, xla::Broadcast(out_of_range, {n})),
                                 {n, 1}),
                    n, TakeUpdates(b, index_type, 1), /*sorted=*/true, /*unique=*/true),
        {n});
    return absl::OkStatus();
  }

  // 5, with 8-bit state: the segments' rows of var, codes and absmax gathered, updated as
  // n rows of blocks (cc/xla/rmsprop_x_xla_state8.h) and scattered back; every other row
  // keeps its codes and absmax.
  void Compile8(XlaOpKernelContext* ctx, const ResourceInputs& r, const HyperParams<xla::XlaOp>& h,
                const std::optional<xla::XlaOp>& valid, const Segments& seg,
                const TensorShape& var_shape, xla::XlaOp var, const std::vector<Xla8>& states,
                int64_t n, int64_t rows, int64_t d, tensorflow::DataType dtype) {
    xla::XlaBuilder* b = ctx->builder();
    const int64_t nb = BlocksPerRow(d);
    const xla::XlaOp var_table = xla::Reshape(var, {rows, d});
    std::vector<Xla8> gathered;
    for (const Xla8& s : states) {
      gathered.push_back({GatherRows(s.codes, seg.segment_row, n, d, /*sorted=*/true),
                          GatherRows(s.absmax, seg.segment_row, n, nb, /*sorted=*/true)});
    }
    const Xla8Step step =
        XlaUpdate8(b, variant_, h, seg.summed,
                   GatherRows(var_table, seg.segment_row, n, d, /*sorted=*/true), gathered, n, d,
                   valid);
    // var and the codes share [rows, d]: one scatter; the absmax tables another.
    std::vector<xla::XlaOp> tables = {var_table}, updates = {step.var}, absmax_tables,
                            absmax_updates;
    std::vector<xla::PrimitiveType> types = {xla::F32};
    for (size_t j = 0; j < states.size(); ++j) {
      tables.push_back(states[j].codes);
      updates.push_back(step.states[j].codes);
      types.push_back(xla::U8);
      absmax_tables.push_back(states[j].absmax);
      absmax_updates.push_back(step.states[j].absmax);
    }
    const std::vector<xla::XlaOp> written =
        ScatterRowsBack(b, tables, seg.segment_row, updates, n, types);
    const std::vector<xla::XlaOp> absmax_written =
        ScatterRowsBack(b, absmax_tables, seg.segment_row, absmax_updates, n, xla::F32);
    xla::PrimitiveType storage;
    OP_REQUIRES_OK(ctx, tensorflow::DataTypeToPrimitiveType(dtype, &storage));
    OP_REQUIRES_OK(ctx, ctx->AssignVariable(
                            r.var, dtype,
                            xla::Reshape(xla::ConvertElementType(written[0], storage),
                                         var_shape.dim_sizes())));
    std::vector<Xla8> result;
    for (size_t j = 0; j < states.size(); ++j) result.push_back({written[1 + j], absmax_written[j]});
    OP_REQUIRES_OK(ctx, AssignXla8States(ctx, r, variant_, var_shape, result));
  }

  Variant variant_;
  int64_t slot_offset_ = -1;
  std::vector<xla::XlaOp> buffers_;  // flat state: the buffers read by ReadFlatSlots
};

REGISTER_XLA_OP(Name("SparseApplyRMSpropX").TypeConstraint("T", tensorflow::kFloatTypes),
                SparseApplyRMSpropXXlaOp);

}  // namespace
}  // namespace tf_rmsprop_ops
