// Calls utils/runtime/kernels/lkdn_cpu.cpp (a block and the tail) on odd sizes with buffers of exactly the tensors'
// sizes, for a build with -fsanitize=address,undefined or -fsanitize=thread (tests/test_native_inference.py): any
// read or write out of bounds, or a data race between the threads of a team, fails it.
#include <cstdio>
#include <cstdlib>
#include <vector>
extern "C" {
long lkdb_params_size(int channels);
long lkdn_tail_params_size(int channels, int blocks);
int lkdb_forward(const float* x, float* out, int n, int h, int w, int channels, const float* params, float eps,
                 int threads);
int lkdn_tail(const float* const* hidden, int blocks, const float* feat, float* out, int n, int h, int w,
              int channels, const float* params, int threads);
}
static std::vector<float> rnd(size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& f : v) f = scale * (rand() / float(RAND_MAX) - 0.5f);
    return v;
}
int main() {
    const int sizes[][3] = {{1, 1, 1}, {1, 3, 5}, {2, 17, 9}, {1, 5, 300}, {3, 2, 33}, {1, 3, 530}};
    for (int c : {42, 56})
        for (auto& size : sizes)
            for (int threads : {1, 2, 3}) {
                const int n = size[0], h = size[1], w = size[2];
                const size_t pixels = size_t(n) * h * w;
                auto params = rnd(lkdb_params_size(c), 0.2f);
                auto x = rnd(pixels * c, 1.0f);
                std::vector<float> out(pixels * c);
                if (lkdb_forward(x.data(), out.data(), n, h, w, c, params.data(), 1e-6f, threads)) return 1;
                const int blocks = 3;
                auto tail = rnd(lkdn_tail_params_size(c, blocks), 0.2f);
                std::vector<std::vector<float>> hidden;
                std::vector<const float*> pointers;
                for (int b = 0; b < blocks; ++b) hidden.push_back(rnd(pixels * c, 1.0f));
                for (auto& t : hidden) pointers.push_back(t.data());
                std::vector<float> sr(pixels * 48);
                if (lkdn_tail(pointers.data(), blocks, x.data(), sr.data(), n, h, w, c, tail.data(), threads)) return 1;
            }
    printf("asan harness ok\n");
}
