// Generate footprints from an exported detgan model with the ONNX Runtime C++ API.
//
//   detgan export RUN/ --format onnx -o footprint.onnx
//   cmake -S examples -B build -DONNXRUNTIME_ROOT=/path/to/onnxruntime && cmake --build build
//   ./build/onnx_infer footprint.onnx 30 1000
//
// Inputs: z (N, latent) float32 standard normals, condition (N,) float32 energy in EeV.
// Output: events (N, 9, 9) float32 in the units of the training data.
#include <onnxruntime_cxx_api.h>

#include <array>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: onnx_infer MODEL.onnx [ENERGY_EEV] [N]\n";
    return 2;
  }
  const float energy = argc > 2 ? std::stof(argv[2]) : 30.0f;
  const int64_t n = argc > 3 ? std::stoll(argv[3]) : 1000;

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "detgan");
  Ort::SessionOptions opts;
  opts.SetIntraOpNumThreads(1);  // one thread per framework worker; scale with processes
  Ort::Session session(env, argv[1], opts);

  // The latent size is stored in the model's metadata by `detgan export`.
  Ort::AllocatorWithDefaultOptions alloc;
  auto meta = session.GetModelMetadata();
  auto latent_str = meta.LookupCustomMetadataMapAllocated("latent_dim", alloc);
  const int64_t latent = std::stoll(latent_str.get());

  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> z(static_cast<size_t>(n * latent));
  for (auto& v : z) v = normal(rng);
  std::vector<float> condition(static_cast<size_t>(n), energy);

  auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::array<int64_t, 2> z_shape{n, latent};
  std::array<int64_t, 1> c_shape{n};
  std::array<Ort::Value, 2> inputs{
      Ort::Value::CreateTensor<float>(mem, z.data(), z.size(), z_shape.data(), 2),
      Ort::Value::CreateTensor<float>(mem, condition.data(), condition.size(), c_shape.data(), 1)};
  const char* input_names[] = {"z", "condition"};
  const char* output_names[] = {"events"};
  auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, inputs.data(), 2,
                             output_names, 1);

  const float* events = outputs[0].GetTensorData<float>();
  auto shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();
  double total = 0.0;
  const int64_t per_event = shape[1] * shape[2];
  for (int64_t i = 0; i < n * per_event; ++i) total += events[i];
  std::cout << "events (" << shape[0] << ", " << shape[1] << ", " << shape[2]
            << "), mean total signal " << total / static_cast<double>(n) << "\n";
  return 0;
}
