package engine

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The few parts of onnxruntime_c_api.h this file needs. The OrtApi table and
// OrtCUDAProviderOptions are ABI-stable (new entries are only appended); the
// indices and the layout are those of the header onnxruntime_go v1.27.0 builds
// with (ORT_API_VERSION 24), checked by TestLegacyCUDALayout.
typedef struct {
	int device_id;
	int cudnn_conv_algo_search;
	size_t gpu_mem_limit;
	int arena_extend_strategy;
	int do_copy_in_default_stream;
	int has_user_compute_stream;
	void *user_compute_stream;
	void *default_memory_arena_cfg;
	int tunable_op_enable;
	int tunable_op_tuning_enable;
	int tunable_op_max_tuning_duration_ms;
} sg_cuda_options;

typedef struct {
	const void *const *(*GetApi)(uint32_t version);
	const char *(*GetVersionString)(void);
} sg_api_base;

enum {
	SG_ORT_API_VERSION = 24,
	SG_GET_ERROR_MESSAGE = 2,
	SG_RELEASE_STATUS = 93,
	SG_APPEND_CUDA = 152,
};

typedef const char *(*sg_get_error_message)(const void *status);
typedef void (*sg_release_status)(void *status);
typedef void *(*sg_append_cuda)(void *options, const sg_cuda_options *cuda);

// sg_append_cuda_v1 calls OrtApi::SessionOptionsAppendExecutionProvider_CUDA
// of the already loaded library lib on so. It returns NULL on success, or an
// error message the caller frees.
static char *sg_append_cuda_v1(const char *lib, void *so, int device_id, int algo,
		size_t mem_limit, int arena, int copy_in_default) {
	void *h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
	if (h == NULL) {
		return strdup("the ONNX Runtime library is not loaded under this path");
	}
	const sg_api_base *(*get_base)(void) = (const sg_api_base *(*)(void))dlsym(h, "OrtGetApiBase");
	dlclose(h); // RTLD_NOLOAD took a reference; the library stays loaded
	if (get_base == NULL) {
		return strdup("the library has no OrtGetApiBase");
	}
	const void *const *api = get_base()->GetApi(SG_ORT_API_VERSION);
	if (api == NULL) {
		return strdup("the library does not offer ONNX Runtime API version 24");
	}
	sg_cuda_options o;
	memset(&o, 0, sizeof o);
	o.device_id = device_id;
	o.cudnn_conv_algo_search = algo;
	o.gpu_mem_limit = mem_limit;
	o.arena_extend_strategy = arena;
	o.do_copy_in_default_stream = copy_in_default;
	void *st = ((sg_append_cuda)api[SG_APPEND_CUDA])(so, &o);
	if (st == NULL) {
		return NULL;
	}
	char *msg = strdup(((sg_get_error_message)api[SG_GET_ERROR_MESSAGE])(st));
	((sg_release_status)api[SG_RELEASE_STATUS])(st);
	return msg;
}

// sg_dlopen_error tries to load path as ONNX Runtime would and returns NULL
// when it loads (then unloads it again) or dlerror()'s message, which the
// caller frees.
static char *sg_dlopen_error(const char *path) {
	void *h = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
	if (h != NULL) {
		dlclose(h);
		return NULL;
	}
	const char *e = dlerror();
	return strdup(e != NULL ? e : "unknown dlopen error");
}
*/
import "C"

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// legacyCUDA is the V1 OrtCUDAProviderOptions that appendCUDALegacy passes.
type legacyCUDA struct {
	deviceID, algo, arena int
	memLimit              uint64
	copyInDefault         int
}

// legacyCUDAKeys are the provider options the V1 CUDA API takes.
var legacyCUDAKeys = []string{"arena_extend_strategy", "cudnn_conv_algo_search", "device_id",
	"do_copy_in_default_stream", "gpu_mem_limit"}

// parseLegacyCUDA maps provider options (the names and values of the V2 API's
// keys) to the V1 struct, or fails with ErrProvider naming the key.
func parseLegacyCUDA(opts map[string]string) (legacyCUDA, error) {
	c := legacyCUDA{memLimit: math.MaxUint64, copyInDefault: 1} // ONNX Runtime's defaults
	bad := func(k, v, want string) error {
		return fmt.Errorf("%w: cuda: provider option %s=%q: want %s", ErrProvider, k, v, want)
	}
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		v := strings.TrimSpace(opts[k])
		switch k {
		case "device_id":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return c, bad(k, v, "a device number >= 0")
			}
			c.deviceID = n
		case "gpu_mem_limit":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 {
				return c, bad(k, v, "a positive number of bytes")
			}
			c.memLimit = n
		case "arena_extend_strategy":
			switch v {
			case "kNextPowerOfTwo", "0":
				c.arena = 0
			case "kSameAsRequested", "1":
				c.arena = 1
			default:
				return c, bad(k, v, "kNextPowerOfTwo or kSameAsRequested")
			}
		case "cudnn_conv_algo_search":
			i := slices.Index([]string{"EXHAUSTIVE", "HEURISTIC", "DEFAULT"}, strings.ToUpper(v))
			if i < 0 {
				return c, bad(k, v, "EXHAUSTIVE, HEURISTIC or DEFAULT")
			}
			c.algo = i
		case "do_copy_in_default_stream":
			switch strings.ToLower(v) {
			case "1", "true":
				c.copyInDefault = 1
			case "0", "false":
				c.copyInDefault = 0
			default:
				return c, bad(k, v, "0 or 1")
			}
		default:
			return c, fmt.Errorf("%w: cuda: provider option %q is not one this library's CUDA API takes (%s)",
				ErrProvider, k, strings.Join(legacyCUDAKeys, ", "))
		}
	}
	return c, nil
}

// sessionOptionsPtr is so's OrtSessionOptions pointer: onnxruntime_go keeps it
// in the struct's only field, unexported. The layout is checked first, so a
// changed onnxruntime_go fails here with an error rather than crashing.
func sessionOptionsPtr(so *ort.SessionOptions) (unsafe.Pointer, error) {
	t := reflect.TypeFor[ort.SessionOptions]()
	if t.NumField() != 1 || t.Field(0).Type.Kind() != reflect.Pointer {
		return nil, errors.New("onnxruntime_go's SessionOptions is not the one pointer field this engine expects")
	}
	p := *(*unsafe.Pointer)(unsafe.Pointer(so))
	if p == nil {
		return nil, errors.New("destroyed session options")
	}
	return p, nil
}

// appendCUDALegacy appends the CUDA provider to so through ONNX Runtime's V1
// API (SessionOptionsAppendExecutionProvider_CUDA with OrtCUDAProviderOptions),
// which a library built without CUDA but with the provider bridge still has: it
// loads libonnxruntime_providers_cuda.so from the library's directory.
// onnxruntime_go wraps only the V2 API, which such a library refuses ("CUDA
// execution provider is not enabled in this build"). lib is the loaded library.
func appendCUDALegacy(so *ort.SessionOptions, lib string, opts map[string]string) error {
	c, err := parseLegacyCUDA(opts)
	if err != nil {
		return err
	}
	p, err := sessionOptionsPtr(so)
	if err != nil {
		return fmt.Errorf("%w: cuda: %v", ErrProvider, err)
	}
	if lib == "" {
		return fmt.Errorf("%w: cuda: ONNX Runtime was initialised outside this engine; its library path is unknown", ErrProvider)
	}
	cl := C.CString(lib)
	defer C.free(unsafe.Pointer(cl))
	msg := C.sg_append_cuda_v1(cl, p, C.int(c.deviceID), C.int(c.algo), C.size_t(c.memLimit),
		C.int(c.arena), C.int(c.copyInDefault))
	if msg != nil {
		defer C.free(unsafe.Pointer(msg))
		return fmt.Errorf("%w: cuda: %s%s", ErrProvider, C.GoString(msg), whyNotLoaded(lib))
	}
	return nil
}

// whyNotLoaded says why the CUDA provider library beside lib does not load
// (ONNX Runtime's status only says "Failed to load shared library" and logs the
// reason): "" when it loads.
func whyNotLoaded(lib string) string {
	path := filepath.Join(filepath.Dir(lib), "libonnxruntime_providers_cuda.so")
	if _, err := os.Stat(path); err != nil {
		return fmt.Sprintf(" (%s is missing: install it with `make ort-gpu`)", path)
	}
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	msg := C.sg_dlopen_error(cp)
	if msg == nil {
		return ""
	}
	defer C.free(unsafe.Pointer(msg))
	return fmt.Sprintf(" (%s)", C.GoString(msg))
}
