// Package toolapps loads bundled applications for the offline tools under
// eval/tools, with the profiles given instead of measured ones.
package toolapps

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/eval"
	"github.com/sneakgate/sneakgate/internal/testenv"
)

// Load opens ONNX Runtime ($SNEAKGATE_ORT_LIB, else the library `make ort`
// installs in the repository: testenv.FindORTLib) and loads each of apps from
// {models}/{app}/manifest.yaml with the variant profiles in the file profiles.
// The caller calls closeEngine when done with the applications.
func Load(ctx context.Context, models, profiles string, apps []string) (loaded []*eval.App, closeEngine func(), err error) {
	lib, err := testenv.FindORTLib()
	if err != nil {
		return nil, nil, err
	}
	e, err := engine.New(engine.Options{LibraryPath: lib, IntraOpThreads: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("ONNX Runtime (set %s or run make deps): %w", engine.LibraryEnv, err)
	}
	prof, err := eval.ReadProfiles(profiles)
	if err != nil {
		e.Close()
		return nil, nil, err
	}
	for _, name := range apps {
		a, err := eval.LoadApp(ctx, filepath.Join(models, name, "manifest.yaml"), eval.LoadOptions{Engine: e, Profiles: prof})
		if err != nil {
			e.Close()
			return nil, nil, err
		}
		loaded = append(loaded, a)
	}
	return loaded, func() { e.Close() }, nil
}

// Main is a tool's main: it parses -apps (defaultApps), -models and -profiles,
// loads the applications (Load), runs run on them and exits 1 with the error,
// prefixed with the tool's name, when anything fails.
func Main(name, defaultApps string, run func([]*eval.App) error) {
	apps := flag.String("apps", defaultApps, "applications under -models, comma-separated")
	models := flag.String("models", "models", "models directory")
	profiles := flag.String("profiles", "eval/testdata/profiles.json", "variant profiles (so that nothing is measured)")
	flag.Parse()
	err := func() error {
		loaded, closeEngine, err := Load(context.Background(), *models, *profiles, strings.Split(*apps, ","))
		if err != nil {
			return err
		}
		defer closeEngine()
		return run(loaded)
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
