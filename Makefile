# Incremental build of the op library. `pip install .` (setup.py) calls this with the
# flags of the TensorFlow it builds against; developers run `make` for a rebuild of what
# changed (objects in build/obj, one per source file, with header dependencies).
PYTHON ?= python3
BUILD_DIR ?= build
# Same file name as the one `pip install -e .` builds, so both routes refresh one library.
OUT ?= tf_rmsprop_ops/_rmsprop_x_ops$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# The span loops are the only code compiled for the machine's vector ISA. Wheels for other
# machines override this (e.g. ARCH_FLAGS="-mavx2 -mfma -mf16c").
ARCH_FLAGS ?= -march=native

# TensorFlow's flags (setup.py passes them): one query, which imports TensorFlow, for those
# not given, read once per make as a makefile fragment (empty when TensorFlow cannot be
# imported; check-flags then says so).
TF_VARS = TF_CFLAGS TF_LFLAGS TF_VERSION TF_CUDA_INCLUDE
ifneq ($(foreach v,$(TF_VARS),$(if $(filter undefined,$(origin $(v))),$(v))),)
  $(shell mkdir -p $(BUILD_DIR) && { $(PYTHON) cc/tf_build_flags.py --make > $(BUILD_DIR)/tf_flags.mk 2>/dev/null || : > $(BUILD_DIR)/tf_flags.mk; })
  include $(BUILD_DIR)/tf_flags.mk
endif

CXX ?= g++
# Sources and flags: cc/sources.bzl, the one list Bazel reads too.
SOURCES = $(shell $(PYTHON) cc/sources.py $(1))
CXXFLAGS_BASE := $(call SOURCES,COPTS) -I. -MMD -MP
TF_SOURCES := $(call SOURCES,TF_SOURCES)
ISA_SOURCES := $(call SOURCES,ISA_SOURCES)
TF_OBJECTS = $(TF_SOURCES:%.cc=$(BUILD_DIR)/obj/%.o)
ISA_OBJECTS = $(ISA_SOURCES:%.cc=$(BUILD_DIR)/obj/%.o)

# GPU kernels (CUDA): built when TensorFlow is a CUDA build (it ships the CUDA headers the
# glue needs) and nvcc is found; GPU=0 never, GPU=1 fails when either is missing.
# The .cu.cc files include no TensorFlow header; `make cuda-check` compiles them alone.
GPU ?= auto
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCHS ?= $(call SOURCES,CUDA_ARCHS)
# --fmad=false: as -ffp-contract=off on the CPU (cc/sources.bzl), the same bits wherever a
# tensor is cut into vector body, scalar tail or chunks. -fvisibility=hidden: the kernels,
# their launchers and CUB's per-device caches stay inside the library (the glue links them
# statically), so no other CUB in the process shares them.
NVCC_FLAGS = -std=c++17 -O3 --fmad=false -Xcompiler -fPIC,-fvisibility=hidden -I. $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a))
CUDA_SOURCES := $(call SOURCES,CUDA_SOURCES)
GPU_GLUE_SOURCES := $(call SOURCES,GPU_GLUE_SOURCES)
HAVE_NVCC := $(shell test -x $(NVCC) && echo 1)
ifeq ($(GPU),auto)
  BUILD_GPU := $(if $(and $(HAVE_NVCC),$(TF_CUDA_INCLUDE)),1,)
else ifeq ($(GPU),1)
  BUILD_GPU := 1
  $(if $(HAVE_NVCC),,$(error GPU=1 but nvcc was not found at $(NVCC) (set CUDA_HOME or NVCC)))
  $(if $(TF_CUDA_INCLUDE),,$(error GPU=1 but the installed TensorFlow is not a CUDA build with CUDA headers (install the full `tensorflow` wheel)))
else
  BUILD_GPU :=
endif
CUDA_OBJECTS = $(CUDA_SOURCES:%.cu.cc=$(BUILD_DIR)/obj/%.cu.o)
GPU_OBJECTS = $(if $(BUILD_GPU),$(CUDA_OBJECTS) $(GPU_GLUE_SOURCES:%.cc=$(BUILD_DIR)/obj/%.o),)
# The CUDA runtime of the nvcc that compiled the kernels, linked statically and private to
# this library (--exclude-libs). It comes before TensorFlow's libraries on the link line:
# libtensorflow_framework.so.2 exports its own CUDA runtime (another CUDA version), and
# without that order the kernels' registration and launch calls would bind to it.
CUDART_PRIVATE = -Wl,--exclude-libs,libcudart_static.a
GPU_LFLAGS = $(if $(BUILD_GPU),-L$(CUDA_HOME)/lib64 -lcudart_static $(CUDART_PRIVATE) -lrt -ldl -lpthread,)

# The commands, each written once: the rules below run them, and every target also depends
# on a file holding its command (flags_file), rewritten only when that changes: another
# ARCH_FLAGS, TensorFlow or nvcc flag rebuilds what it affects.
TF_CXX = $(CXX) $(CXXFLAGS_BASE) $(TF_CFLAGS)
ISA_CXX = $(CXX) $(CXXFLAGS_BASE) $(ARCH_FLAGS)
GLUE_CXX = $(TF_CXX) -DGOOGLE_CUDA=1 -isystem $(TF_CUDA_INCLUDE)
NVCC_CMD = $(NVCC) $(NVCC_FLAGS)
PROBE_CXX = $(CXX) -std=c++17 -O3 -fPIC -shared $(ARCH_FLAGS) -pthread -I.
# TensorFlow's libraries are found relative to the installed `tensorflow` package
# (site-packages/tf_rmsprop_ops/ -> site-packages/tensorflow/), as other custom-op wheels
# do, never at the build machine's absolute path. (TensorFlow loads them before the op
# library in every process anyway: `import tf_rmsprop_ops` imports tensorflow first.)
RPATH_FLAGS = -Wl,-rpath,\$$ORIGIN/../tensorflow
LINK_LIBS = $(GPU_LFLAGS) $(TF_LFLAGS) $(RPATH_FLAGS)
FLAGS_DIR = $(BUILD_DIR)/flags
flags_file = $(shell mkdir -p $(FLAGS_DIR) && printf '%s\n' '$(strip $(2))' | cmp -s - $(FLAGS_DIR)/$(1) || printf '%s\n' '$(strip $(2))' > $(FLAGS_DIR)/$(1); echo $(FLAGS_DIR)/$(1))
TF_STAMP := $(call flags_file,tf,$(TF_CXX))
ISA_STAMP := $(call flags_file,isa,$(ISA_CXX))
GLUE_STAMP := $(call flags_file,glue,$(GLUE_CXX))
CUDA_STAMP := $(call flags_file,cuda,$(NVCC_CMD))
PROBE_STAMP := $(call flags_file,probe,$(PROBE_CXX))
LINK_STAMP := $(call flags_file,link,$(CXX) $(LINK_LIBS))

# The benchmark's bandwidth probe: TensorFlow-free, loaded with ctypes.
PROBE = $(dir $(OUT))_stream_probe.so

.PHONY: asan-probe all clean check-flags gpu-status cuda-check asan
all: gpu-status $(OUT) $(PROBE)

GPU_STATUS = $(if $(BUILD_GPU),ON (nvcc $(NVCC), CUDA headers from TensorFlow, sm_$(CUDA_ARCHS)),OFF ($(if $(filter 0,$(GPU)),GPU=0,$(if $(HAVE_NVCC),,no nvcc at $(NVCC); )$(if $(TF_CUDA_INCLUDE),,the installed TensorFlow is not a CUDA build - the full tensorflow wheel is))))
gpu-status:
	@echo "tf_rmsprop_ops: GPU kernels $(GPU_STATUS)"

# Compiles every .cu.cc for every target architecture (no TensorFlow needed): CI keeps the
# CUDA kernels compiling on machines without a GPU.
cuda-check: $(CUDA_OBJECTS)

$(BUILD_DIR)/obj/%.cu.o: %.cu.cc $(CUDA_STAMP) cc/cuda/rmsprop_x_cuda.h cc/cuda/rmsprop_x_cuda_device.cuh cc/rmsprop_x_update.h cc/cpu/rmsprop_x_cpu.h cc/state8.h
	@mkdir -p $(dir $@)
	$(NVCC_CMD) -x cu -c $< -o $@

$(BUILD_DIR)/obj/cc/kernels/gpu/%.o: cc/kernels/gpu/%.cc $(GLUE_STAMP) | check-flags
	@mkdir -p $(dir $@)
	$(GLUE_CXX) -c $< -o $@

$(PROBE): cc/bench/stream_probe.cc cc/cpu/row_prefetch.h $(PROBE_STAMP)
	@mkdir -p $(dir $@)
	$(PROBE_CXX) $< -o $@

check-flags:
	@test -n "$(TF_CFLAGS)" || { echo "error: cannot import TensorFlow with $(PYTHON) to get its build flags" >&2; exit 1; }

$(OUT): $(TF_OBJECTS) $(ISA_OBJECTS) $(GPU_OBJECTS) $(LINK_STAMP) | check-flags
	@mkdir -p $(dir $@)
	$(CXX) -shared -o $@ $(filter %.o,$^) $(LINK_LIBS)

$(BUILD_DIR)/obj/cc/cpu/%.o: cc/cpu/%.cc $(ISA_STAMP)
	@mkdir -p $(dir $@)
	$(ISA_CXX) -c $< -o $@

$(BUILD_DIR)/obj/%.o: %.cc $(TF_STAMP) | check-flags
	@mkdir -p $(dir $@)
	$(TF_CXX) -c $< -o $@

clean:
	rm -rf $(BUILD_DIR)/obj $(FLAGS_DIR) $(OUT) $(PROBE) $(SAN_DIR)

# Sanitizer build (.ci/sanitizers.sh): the op definitions, shells, kernels and CPU loops
# instrumented with AddressSanitizer and UBSan (any report aborts); the XLA lowerings (HLO
# builders, whose arrays XLA allocates and runs) reuse the normal objects. The library
# needs the sanitizer runtimes preloaded into Python (LD_PRELOAD), as the script does.
# UBSan: the TensorFlow-free span loops (cc/cpu, whose vector loads and stores assume
# 16-byte alignment) get GCC's whole `undefined` group. The TUs that include TF's headers get
# every check that compiles with them: GCC 12 rejects absl's constexpr function-pointer
# comparisons under null, nonnull-attribute and returns-nonnull-attribute, and vptr would need
# RTTI for TF's classes. ASan covers invalid pointers there.
UBSAN_CHECKS = signed-integer-overflow,shift,integer-divide-by-zero,bounds,return,unreachable,vla-bound,bool,enum,float-cast-overflow,alignment,object-size,pointer-overflow,builtin
SANITIZE_FLAGS = -fsanitize=address,$(UBSAN_CHECKS) -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1
SAN_DIR = $(BUILD_DIR)-asan
SAN_OBJECTS = $(filter-out $(SAN_DIR)/obj/cc/xla/%,$(TF_SOURCES:%.cc=$(SAN_DIR)/obj/%.o)) $(ISA_SOURCES:%.cc=$(SAN_DIR)/obj/%.o)
SAN_OUT ?= $(SAN_DIR)/$(notdir $(OUT))
SAN_TF_CXX = $(TF_CXX) $(SANITIZE_FLAGS)
SAN_ISA_CXX = $(ISA_CXX) $(SANITIZE_FLAGS) -fsanitize=undefined
SAN_TF_STAMP := $(call flags_file,san-tf,$(SAN_TF_CXX))
SAN_ISA_STAMP := $(call flags_file,san-isa,$(SAN_ISA_CXX))
asan: $(SAN_OUT)
$(SAN_OUT): $(SAN_OBJECTS) $(filter $(BUILD_DIR)/obj/cc/xla/%,$(TF_OBJECTS)) | check-flags
	$(CXX) -shared -fsanitize=address,undefined -o $@ $^ $(TF_LFLAGS)
$(SAN_DIR)/obj/cc/cpu/%.o: cc/cpu/%.cc $(SAN_ISA_STAMP)
	@mkdir -p $(dir $@)
	$(SAN_ISA_CXX) -c $< -o $@
$(SAN_DIR)/obj/%.o: %.cc $(SAN_TF_STAMP) | check-flags
	@mkdir -p $(dir $@)
	$(SAN_TF_CXX) -c $< -o $@
-include $(SAN_OBJECTS:.o=.d)
# The planted fault of .ci/sanitizers.sh (tests/sanitizer/probe.cc with the instrumented span
# loops; never part of the op library).
SAN_PROBE = $(SAN_DIR)/sanitizer_probe.so
asan-probe: $(SAN_PROBE)
$(SAN_PROBE): tests/sanitizer/probe.cc $(SAN_DIR)/obj/cc/cpu/rmsprop_x_cpu.o
	$(CXX) $(CXXFLAGS_BASE) $(SANITIZE_FLAGS) -fsanitize=undefined -shared -o $@ $^

-include $(TF_OBJECTS:.o=.d) $(ISA_OBJECTS:.o=.d) $(GPU_OBJECTS:.o=.d)

# What the library was built against; _library.py compares it with the runtime TensorFlow.
BUILD_INFO = $(dir $(OUT))_build_info.py
INFO_STAMP := $(call flags_file,info,$(TF_VERSION) $(GPU_STATUS))
all: $(BUILD_INFO)
$(BUILD_INFO): $(OUT) $(INFO_STAMP) Makefile
	@printf '# Generated by the build: the TensorFlow this op library was compiled against.\nTF_VERSION = "%s"\nGPU_KERNELS = "%s"\n' "$(TF_VERSION)" "$(GPU_STATUS)" > $@
