// Calls utils/runtime/kernels/lkdn_cpu.cpp (the whole network: shallow features, two blocks, the tail) on odd
// sizes, one after another (the rings' memory is kept between calls), with buffers of exactly the tensors' sizes,
// for a build with -fsanitize=address,undefined or -fsanitize=thread (tests/test_native_inference.py): any read or
// write out of bounds, or a data race between the threads of a team, fails it.
#include <cstdio>
#include <cstdlib>
#include <vector>
extern "C" {
long lkdb_params_size(int channels);
long lkdn_features_params_size(int channels);
long lkdn_tail_params_size(int channels, int blocks);
int lkdn_forward(const float* x, float* feat, float* const* hidden, float* out, int n, int h, int w, int channels,
                 int blocks, const float* features_params, const float* const* block_params, const float* eps,
                 const float* tail_params, int threads);
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
                const int n = size[0], h = size[1], w = size[2], blocks = 2;
                const size_t pixels = size_t(n) * h * w;
                auto x = rnd(pixels * 3, 1.0f), features = rnd(lkdn_features_params_size(c), 0.2f);
                auto tail = rnd(lkdn_tail_params_size(c, blocks), 0.2f);
                std::vector<std::vector<float>> params, hidden;
                std::vector<const float*> param_pointers;
                std::vector<float*> hidden_pointers;
                for (int b = 0; b < blocks; ++b) {
                    params.push_back(rnd(lkdb_params_size(c), 0.2f));
                    hidden.emplace_back(pixels * c);
                    param_pointers.push_back(params.back().data());
                    hidden_pointers.push_back(hidden.back().data());
                }
                std::vector<float> feat(pixels * c), sr(pixels * 48), eps(blocks, 1e-6f);
                if (lkdn_forward(x.data(), feat.data(), hidden_pointers.data(), sr.data(), n, h, w, c, blocks,
                                 features.data(), param_pointers.data(), eps.data(), tail.data(), threads))
                    return 1;
            }
    printf("asan harness ok\n");
}
