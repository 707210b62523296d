// Calls train/kernels/conv_grad.cpp on many odd shapes with buffers of exactly the tensors' sizes, for a build
// with -fsanitize=address,undefined (tests/test_native_conv_grad.py): any read or write out of bounds fails it.
#include <cstdio>
#include <vector>
#include <cstdlib>
extern "C" {
int depthwise_weight_grad(const float* grad, const float* x, int n, int h, int w, int c, int ho, int wo, int kh,
                          int kw, int dh, int dw, int ph, int pw, float* grad_w, float* grad_b, int threads);
int pointwise_backward(const float* const* gs, const int* cos, int count, const float* x, const float* weight,
                       long pixels, int ci, float* gin, float* grad_w, float* grad_b, int threads);
}
static std::vector<float> rnd(size_t n) { std::vector<float> v(n); for (auto& f : v) f = rand() / float(RAND_MAX) - 0.5f; return v; }
int main() {
  // depthwise: exact-size heap buffers so ASAN sees any overrun
  int shapes[][8] = {{5,5,1,1,2,2,0,0},{5,5,3,3,6,6,0,0},{3,3,1,1,1,1,0,0},{1,5,1,2,0,4,0,0},{5,5,1,1,0,0,0,0},{3,3,2,2,1,3,0,0}};
  for (int c : {1, 3, 7, 16, 21, 42}) for (auto& sh : shapes) for (int w : {1, 5, 37}) {
    int n = 2, h = 6, kh = sh[0], kw = sh[1], dh = sh[2], dw = sh[3], ph = sh[4], pw = sh[5];
    int ho = h + 2*ph - dh*(kh-1), wo = w + 2*pw - dw*(kw-1);
    if (ho < 1 || wo < 1) continue;
    auto x = rnd(size_t(n)*h*w*c), g = rnd(size_t(n)*ho*wo*c);
    std::vector<float> gw(size_t(c)*kh*kw), gb(c);
    for (int t : {1, 2, 3}) if (depthwise_weight_grad(g.data(), x.data(), n, h, w, c, ho, wo, kh, kw, dh, dw, ph, pw, gw.data(), gb.data(), t)) { printf("dw fail\n"); return 1; }
  }
  for (int ci : {1, 5, 12, 17, 42, 84}) for (long pixels : {1L, 2L, 3L, 7L, 129L, 300L}) {
    int outs[3] = {1, 5, 21};
    for (int count = 1; count <= 3; ++count) {
      int co = 0; for (int i = 0; i < count; ++i) co += outs[i];
      auto x = rnd(size_t(pixels)*ci), wt = rnd(size_t(co)*ci);
      std::vector<std::vector<float>> gs; std::vector<const float*> ptrs;
      for (int i = 0; i < count; ++i) { gs.push_back(rnd(size_t(pixels)*outs[i])); }
      for (auto& v : gs) ptrs.push_back(v.data());
      std::vector<float> gin(size_t(pixels)*ci), gw(size_t(co)*ci), gb(co);
      for (int t : {1, 2}) if (pointwise_backward(ptrs.data(), outs, count, x.data(), wt.data(), pixels, ci, gin.data(), gw.data(), gb.data(), t)) { printf("pw fail\n"); return 1; }
    }
  }
  printf("asan harness ok\n");
}
