// LSQ for float32 CPU tensors, as a C++ autograd function: one pass forward, one pass backward
// over memory in order (any dense layout), in torch's thread pool and SIMD width, and no Python
// per call; optionally of h_swish(v), the activation before it, in the same passes.
// oqat/quant/lsq.py builds it on first use and calls it as torch.ops.oqat_lsq.lsq.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kGrain = 16384;  // elements per task, as torch's elementwise ops

// h_swish and its gradient operation for operation as torch's CPU kernels (vectorised form),
// so that folding the activation into the quantizer changes no bit.
inline Vec hardswish(const Vec& v) {
  return v * at::vec::minimum(at::vec::maximum(v + Vec(3.0f), Vec(0.0f)), Vec(6.0f)) / Vec(6.0f);
}
inline float hardswish(float v) { return v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f; }
inline Vec hardswish_grad(const Vec& g, const Vec& v) {
  return Vec::blendv(Vec::blendv(g * ((v / Vec(3.0f)) + Vec(0.5f)), g, v >= Vec(3.0f)), Vec(0.0f), v < Vec(-3.0f));
}
inline float hardswish_grad(float g, float v) { return v < -3.0f ? 0.0f : v < 3.0f ? g * (v / 3.0f + 0.5f) : g; }

// v_hat = round(clamp(u / a, qn, qp)) * a with u = v or h_swish(v), rounding half to even as torch.round.
template <bool kHardswish>
at::Tensor lsq_forward(const at::Tensor& v, double a, double qn, double qp) {
  auto out = at::empty_like(v);
  const float* src = v.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const float fa = a, lo = qn, hi = qp;
  at::parallel_for(0, v.numel(), kGrain, [&](int64_t begin, int64_t end) {
    const Vec va(fa), vlo(lo), vhi(hi);
    int64_t i = begin;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec u = Vec::loadu(src + i);
      if constexpr (kHardswish) u = hardswish(u);
      (at::vec::clamp(u / va, vlo, vhi).round() * va).store(dst + i);
    }
    for (; i < end; ++i) {
      const float u = kHardswish ? hardswish(src[i]) : src[i];
      dst[i] = std::nearbyint(std::min(std::max(u / fa, lo), hi)) * fa;
    }
  });
  return out;
}

// (dL/dv, dL/ds): with x = u / a and q = round(clamp(x, qn, qp)), the gradient passes where
// qn < x < qp (the authors' hardtanh), then through h_swish if it was folded in, and dL/d|s|
// sums g * (q - x) inside and g * q outside; `scale` is LSQ's gradient scale times the sign
// of s. u and x are recomputed, not v_hat saved: one array less to read.
template <bool kHardswish>
std::tuple<at::Tensor, at::Tensor> lsq_backward(const at::Tensor& g, const at::Tensor& v, double a, double qn,
                                                double qp, double scale) {
  auto grad_v = at::empty_like(v);
  const float* pg = g.const_data_ptr<float>();
  const float* pv = v.const_data_ptr<float>();
  float* pgv = grad_v.mutable_data_ptr<float>();
  const float fa = a, lo = qn, hi = qp;
  std::vector<double> partial(at::get_num_threads(), 0.0);
  at::parallel_for(0, v.numel(), kGrain, [&](int64_t begin, int64_t end) {
    const Vec va(fa), vlo(lo), vhi(hi);
    // Plain lanes over 8 vectors (one short dependency chain), each block's lanes then added
    // with Kahan's compensation: about as exact as summing in double, at SIMD speed.
    Vec sum(0.0f), carry(0.0f);
    int64_t i = begin;
    while (i + Vec::size() <= end) {
      const int64_t stop = std::min(end, i + 8 * Vec::size());
      Vec block(0.0f);
      for (; i + Vec::size() <= stop; i += Vec::size()) {
        const Vec gi = Vec::loadu(pg + i), vi = Vec::loadu(pv + i);
        const Vec x = (kHardswish ? hardswish(vi) : vi) / va;
        const Vec inside = (x > vlo) & (x < vhi);
        const Vec gu = gi & inside;
        (kHardswish ? hardswish_grad(gu, vi) : gu).store(pgv + i);
        block = block + gi * (at::vec::clamp(x, vlo, vhi).round() - (x & inside));
      }
      const Vec y = block - carry, next = sum + y;
      carry = (next - sum) - y;
      sum = next;
    }
    float lanes[Vec::size()];
    sum.store(lanes);
    double total = 0.0;
    for (float l : lanes) total += l;
    for (; i < end; ++i) {
      const float x = (kHardswish ? hardswish(pv[i]) : pv[i]) / fa;
      const bool in = x > lo && x < hi;
      const float gu = in ? pg[i] : 0.0f;
      pgv[i] = kHardswish ? hardswish_grad(gu, pv[i]) : gu;
      total += pg[i] * (std::nearbyint(std::min(std::max(x, lo), hi)) - (in ? x : 0.0f));
    }
    partial[at::get_thread_num()] += total;
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  auto grad_s = at::empty({1}, v.options());
  *grad_s.mutable_data_ptr<float>() = static_cast<float>(sum * scale);
  return {grad_v, grad_s};
}

// Whether two dense same-shaped tensors lay their elements out in the same order: a size-1
// dim's stride is arbitrary (a 1x1 kernel's gradient may come NCHW for an NHWC weight).
bool same_memory_order(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

using torch::autograd::AutogradContext;

struct LSQ : public torch::autograd::Function<LSQ> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor v, const at::Tensor& step, double qn, double qp,
                            double grad_scale, bool hardswish) {
    // A sliced weight is copied dense, keeping its layout: the conv would reorder an NCHW copy.
    if (!(v.is_contiguous() || v.is_contiguous(at::MemoryFormat::ChannelsLast))) v = v.contiguous(v.suggest_memory_format());
    const double s = step.item<double>();
    ctx->save_for_backward({v});
    ctx->saved_data["s"] = s;
    ctx->saved_data["qn"] = qn;
    ctx->saved_data["qp"] = qp;
    ctx->saved_data["scale"] = grad_scale * ((s > 0) - (s < 0));
    ctx->saved_data["hardswish"] = hardswish;
    return (hardswish ? lsq_forward<true> : lsq_forward<false>)(v, std::abs(s), qn, qp);
  }
  static torch::autograd::variable_list backward(AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto v = ctx->get_saved_variables()[0];
    auto g = grads[0];
    if (!same_memory_order(g, v)) g = at::empty_like(v).copy_(g);
    const auto& d = ctx->saved_data;
    auto [grad_v, grad_s] = (d.at("hardswish").toBool() ? lsq_backward<true> : lsq_backward<false>)(
        g, v, std::abs(d.at("s").toDouble()), d.at("qn").toDouble(), d.at("qp").toDouble(), d.at("scale").toDouble());
    return {grad_v, grad_s, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor lsq(const at::Tensor& v, const at::Tensor& step, double qn, double qp, double grad_scale, bool hardswish) {
  return LSQ::apply(v, step, qn, qp, grad_scale, hardswish);
}

}  // namespace

TORCH_LIBRARY(oqat_lsq, m) {
  m.def("lsq(Tensor v, Tensor step, float qn, float qp, float grad_scale, bool hardswish) -> Tensor", &lsq);
}
