package engine_test

import (
	"context"
	"errors"
	"log"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
)

// The gateway's use: register the apps, profile once at start-up, then swap and
// run as the scheduler decides. (Compiled, not run: it needs the library.)
func Example() {
	e, err := engine.New(engine.Options{
		IntraOpThreads: 1, InterOpThreads: 1,
		MemoryBudgetBytes: 16 << 20,
		ProfileCache:      "/var/lib/sneakgate/profiles",
	})
	if err != nil {
		log.Fatal(err) // ErrNoLibrary: run scripts/install-ort.sh, set SNEAKGATE_ORT_LIB
	}
	defer e.Close()
	app, err := manifest.Load("models/fashion/manifest.yaml")
	if err != nil {
		log.Fatal(err)
	}
	if err := e.Register(app); err != nil {
		log.Fatal(err)
	}
	if err := e.Profile(context.Background()); err != nil {
		log.Fatal(err)
	}
	id := engine.VariantID{App: "fashion", Variant: "cnn"}
	p, _ := e.ProfileOf(id)
	log.Printf("cnn: load %v, batch 12 takes %v, counts %d bytes", p.Load, p.LatencyAt(12), p.MemBytes)

	_, err = e.Load(id)
	if errors.Is(err, engine.ErrOverBudget) {
		// The scheduler picks victims; the engine never evicts on its own.
		for _, r := range e.Resident() {
			if _, err := e.Unload(r); err != nil {
				log.Print(err)
			}
		}
		_, err = e.Load(id)
	}
	if err != nil {
		log.Fatal(err)
	}
	probs, err := e.Run(id, [][]float32{make([]float32, 784), make([]float32, 784)})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("first request: %v", probs[0])
}
