package scripts

import (
	"bytes"
	"context"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
)

// networkTools are replaced on PATH by stubs that record being run: make install
// must run none of them (no apt, npm or go downloads, no pkill).
var networkTools = []string{"apt", "apt-get", "npm", "go", "curl", "wget", "sudo", "pkill"}

type installer struct {
	t       *testing.T
	root    string // the repository
	destdir string
	stubs   string // stubs of networkTools
	bin     string // a stand-in for bin/sneakgate
	ortLib  string // a stand-in for the ONNX Runtime library
	umask   string // make install's umask; "": the test's own
}

func newInstaller(t *testing.T) *installer {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := &installer{t: t, root: root, destdir: filepath.Join(dir, "dest"), stubs: filepath.Join(dir, "stubs"),
		bin: filepath.Join(dir, "sneakgate"), ortLib: filepath.Join(dir, "libonnxruntime.so")}
	writeFile(t, in.bin, "#!/bin/sh\necho sneakgate stand-in\n", 0o755)
	writeFile(t, in.ortLib, "not a library\n", 0o644)
	for _, tool := range networkTools {
		writeFile(t, filepath.Join(in.stubs, tool),
			"#!/bin/sh\necho \"$0 $*\" >>"+filepath.Join(dir, "ran")+"\nexit 1\n", 0o755)
	}
	t.Cleanup(func() {
		if ran, err := os.ReadFile(filepath.Join(dir, "ran")); err == nil {
			t.Errorf("make install ran tools it must not run (network, privileges):\n%s", ran)
		}
	})
	return in
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// make runs `make install DESTDIR=... PREFIX=/usr` with vars overriding the defaults,
// in a clean environment: nothing of an enclosing make (make test) passes through.
func (in *installer) make(vars ...string) (string, error) {
	args := append([]string{"-C", in.root, "--no-print-directory", "install",
		"DESTDIR=" + in.destdir, "PREFIX=/usr", "INSTALL_BIN=" + in.bin, "ORT_LIB=" + in.ortLib}, vars...)
	cmd := exec.Command("make", args...)
	if in.umask != "" {
		cmd = exec.Command("sh", append([]string{"-c", `umask "$0" && exec make "$@"`, in.umask}, args...)...)
	}
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS",
			"DESTDIR", "PREFIX", "UNITDIR", "INSTALL_BIN", "ORT_LIB", "WITH_GPL_DATA", "PATH":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, "PATH="+in.stubs+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (in *installer) install(vars ...string) string {
	in.t.Helper()
	out, err := in.make(vars...)
	if err != nil {
		in.t.Fatalf("make install: %v\n%s", err, out)
	}
	return out
}

func (in *installer) path(p string) string { return filepath.Join(in.destdir, p) }

func (in *installer) read(p string) string {
	in.t.Helper()
	b, err := os.ReadFile(in.path(p))
	if err != nil {
		in.t.Fatal(err)
	}
	return string(b)
}

func (in *installer) exists(p string) bool {
	_, err := os.Lstat(in.path(p))
	return err == nil
}

const (
	config = "/etc/sneakgate/sneakgate.yaml"
	unit   = "/etc/systemd/system/sneakgate.service"
)

// TestMakeInstall installs into a temporary DESTDIR with PREFIX=/usr several times:
// the unit and configuration name the installed files, an edited configuration is
// kept (the new default beside it as .dist), nothing of the build is installed, and
// nothing is downloaded.
func TestMakeInstall(t *testing.T) {
	in := newInstaller(t)
	in.install()
	checkInstalled(t, in, false)
	def := in.read(config)
	for _, f := range []string{config, "/etc/sneakgate/mosquitto.conf", "/etc/sneakgate/mosquitto.acl"} {
		if in.exists(f + ".dist") {
			t.Errorf("a first install wrote %s.dist", f)
		}
	}

	// The operator edits the configuration; two more installs keep it.
	edited := def + "# edited by the operator\n"
	writeFile(t, in.path(config), edited, 0o644)
	for i := 2; i <= 3; i++ {
		out := in.install()
		if got := in.read(config); got != edited {
			t.Fatalf("install %d replaced the edited %s", i, config)
		}
		if !strings.Contains(out, "kept "+in.path(config)) {
			t.Errorf("install %d does not say it kept the edited %s:\n%s", i, config, out)
		}
		if got := in.read(config + ".dist"); got != def {
			t.Errorf("install %d: %s.dist is not the new default", i, config)
		}
	}
	checkInstalled(t, in, false)

	// Back to the default: the next install leaves no .dist.
	writeFile(t, in.path(config), def, 0o644)
	in.install()
	if in.exists(config + ".dist") {
		t.Errorf("%s.dist is left although the configuration is the default again", config)
	}

	verifyUnit(t, in)
}

// usrPath matches the absolute paths into PREFIX=/usr a unit or config line names.
var usrPath = regexp.MustCompile(`/usr/[^\s"',]+`)

// The GPL-derived data (THIRD_PARTY.md) that make install leaves out unless
// WITH_GPL_DATA=1: whole apps, and files of other apps (relative to models/).
var (
	gplApps  = []string{"satellite"}
	gplFiles = []string{"vad/samples.sgs", "vad/data/validation.sgs"}
)

// checkInstalled checks an installation; withGPL: made with WITH_GPL_DATA=1.
func checkInstalled(t *testing.T, in *installer, withGPL bool) {
	t.Helper()
	if !in.exists("/usr/bin/sneakgate") || !in.exists("/usr/lib/sneakgate/libonnxruntime.so.1.30.0") {
		t.Fatalf("the binary or the ONNX Runtime library is not installed under PREFIX=/usr")
	}

	// Every path the unit and the configuration name is installed; none is /usr/local.
	for _, f := range []string{unit, config} {
		named := 0
		for n, line := range strings.Split(in.read(f), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			for _, p := range usrPath.FindAllString(line, -1) {
				named++
				if strings.HasPrefix(p, "/usr/local/") {
					t.Errorf("%s:%d names %s with PREFIX=/usr", f, n+1, p)
				} else if !in.exists(p) {
					t.Errorf("%s:%d names %s, which is not installed", f, n+1, p)
				}
			}
		}
		if named == 0 {
			t.Errorf("%s names no path under PREFIX=/usr", f)
		}
	}
	u := in.read(unit)
	for _, want := range []string{
		"\nExecStart=/usr/bin/sneakgate serve -config /etc/sneakgate/sneakgate.yaml\n",
		"\nEnvironment=SNEAKGATE_ORT_LIB=/usr/lib/sneakgate/libonnxruntime.so.1.30.0\n",
		"\nDocumentation=file:///usr/share/doc/sneakgate/README.md\n",
		// The broker password as a credential (issue 12), with a blank default so that
		// a start without /etc/sneakgate/mqtt-password does not fail.
		"\nLoadCredential=mqtt-password:/etc/sneakgate/mqtt-password\n",
		"\nSetCredential=mqtt-password:\\n\n",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("the installed unit lacks %q", strings.TrimSpace(want))
		}
	}
	for _, doc := range []string{"README.md", "LICENSE", "THIRD_PARTY.md", "docs/deployment.md", "models/README.md"} {
		if !in.exists("/usr/share/doc/sneakgate/" + doc) {
			t.Errorf("%s is not installed in /usr/share/doc/sneakgate", doc)
		}
	}

	// Every bundled app is installed but the GPL-derived ones (unless withGPL), and
	// the configuration serves exactly the installed apps; no training source or
	// build script is installed.
	manifests, _ := filepath.Glob(filepath.Join(in.root, "models", "*", "manifest.yaml"))
	if len(manifests) == 0 {
		t.Fatal("no models/*/manifest.yaml in the repository")
	}
	var want []string
	for _, m := range manifests {
		app := filepath.Base(filepath.Dir(m))
		installed := in.exists("/usr/share/sneakgate/models/" + app)
		switch {
		case withGPL || !slices.Contains(gplApps, app):
			want = append(want, app)
			if !in.exists("/usr/share/sneakgate/models/" + app + "/manifest.yaml") {
				t.Errorf("app %s is not installed", app)
			}
		case installed:
			t.Errorf("app %s (GPL-derived data) is installed without WITH_GPL_DATA=1", app)
		}
	}
	for _, f := range gplFiles {
		if got := in.exists("/usr/share/sneakgate/models/" + f); got != withGPL {
			t.Errorf("models/%s (GPL-derived data) installed: %v, want %v (WITH_GPL_DATA=1: %v)", f, got, withGPL, withGPL)
		}
	}
	if got := configApps(in.read(config)); !slices.Equal(got, want) {
		t.Errorf("the installed %s serves apps %v, want the installed ones %v", config, got, want)
	}
	for _, p := range []string{"train", "tools", "examples", "build.sh"} {
		if in.exists("/usr/share/sneakgate/models/" + p) {
			t.Errorf("models/%s is installed", p)
		}
	}
	err := filepath.WalkDir(in.destdir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(p) {
		case ".py", ".sh", ".go":
			t.Errorf("build or training source installed: %s", strings.TrimPrefix(p, in.destdir))
		}
		if strings.HasPrefix(p, in.path("/usr/share")) {
			if info, err := d.Info(); err == nil && info.Mode().Perm()&0o004 == 0 {
				t.Errorf("%s is not world-readable (%v): the service's dynamic user reads it", p, info.Mode())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// verifyUnit runs `systemd-analyze verify` on the installed unit, its ExecStart=
// rebased into DESTDIR (checkInstalled has checked the path itself).
func verifyUnit(t *testing.T, in *installer) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: the unit is not verified")
		return
	}
	u := strings.ReplaceAll(in.read(unit), "ExecStart=/usr/bin/sneakgate ", "ExecStart="+in.path("/usr/bin/sneakgate")+" ")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "sneakgate.service"), u, 0o644)
	out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(dir, "sneakgate.service")).CombinedOutput()
	// verify exits 0 on unknown keys and invalid values: any message is a failure.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify sneakgate.service: %v\n%s", err, out)
	}
}

// TestMakeInstallUmask: under a restrictive umask (027 and 077, common on hardened
// hosts and for sudo), make install still makes every directory 0755 and every file
// world-readable: the service's dynamic user reads the configuration, the models and
// the library, and Mosquitto (user mosquitto) reads /etc/sneakgate/mosquitto.acl.
// An /etc/sneakgate left 0700 by an earlier install under such a umask is made
// 0755 again; the password file in it keeps its 0600 and its content.
func TestMakeInstallUmask(t *testing.T) {
	in := newInstaller(t)
	in.umask = "027"
	in.install()
	checkInstalled(t, in, false)
	checkModes(t, in, nil)

	secret := "/etc/sneakgate/mqtt-password"
	writeFile(t, in.path(secret), "s3cret\n", 0o600)
	if err := os.Chmod(in.path("/etc/sneakgate"), 0o700); err != nil {
		t.Fatal(err)
	}
	in.umask = "077"
	in.install()
	checkInstalled(t, in, false)
	checkModes(t, in, map[string]fs.FileMode{secret: 0o600})
	if got := in.read(secret); got != "s3cret\n" {
		t.Errorf("make install changed %s: %q", secret, got)
	}
}

// checkModes checks that every directory under DESTDIR is 0755 and every file
// world-readable and writable by its owner alone (the binary 0755, the files under
// /etc/sneakgate 0644), but the files in except, which must have their mode.
func checkModes(t *testing.T, in *installer, except map[string]fs.FileMode) {
	t.Helper()
	want := map[string]fs.FileMode{
		"/usr/bin/sneakgate":                          0o755,
		"/etc/sneakgate/sneakgate.yaml":               0o644,
		"/etc/sneakgate/mosquitto.conf":               0o644,
		"/etc/sneakgate/mosquitto.acl":                0o644,
		"/usr/lib/sneakgate/libonnxruntime.so.1.30.0": 0o644,
		unit: 0o644,
	}
	err := filepath.WalkDir(in.destdir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, perm := strings.TrimPrefix(p, in.destdir), info.Mode().Perm()
		if m, ok := except[rel]; ok {
			if perm != m {
				t.Errorf("%s is %#o, want %#o", rel, perm, m)
			}
			return nil
		}
		switch {
		case d.IsDir() && perm != 0o755:
			t.Errorf("directory %s is %#o, want 0755 (the service and the broker read below it)", rel, perm)
		case d.IsDir():
		case want[rel] != 0 && perm != want[rel]:
			t.Errorf("%s is %#o, want %#o", rel, perm, want[rel])
		case perm&0o044 != 0o044 || perm&0o022 != 0:
			t.Errorf("%s is %#o, want it readable by everyone and writable by its owner alone", rel, perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMakeInstallNeedsBuiltFiles: without the binary or the library, make install
// stops, names the make target that builds it, and installs nothing.
func TestMakeInstallNeedsBuiltFiles(t *testing.T) {
	in := newInstaller(t)
	for _, c := range []struct{ override, want string }{
		{"INSTALL_BIN=" + filepath.Join(t.TempDir(), "missing"), "run `make build` first"},
		{"ORT_LIB=" + filepath.Join(t.TempDir(), "missing.so"), "run `make ort`"},
	} {
		out, err := in.make(c.override)
		if err == nil {
			t.Errorf("make install %s succeeded:\n%s", c.override, out)
		} else if !strings.Contains(out, c.want) {
			t.Errorf("make install %s: %q, want a message saying %q", c.override, out, c.want)
		}
		if _, err := os.Stat(in.destdir); err == nil {
			t.Errorf("make install %s installed files although it failed", c.override)
		}
	}
}

// configApps returns the names of the bundled apps (PREFIX/share/sneakgate/models/{app})
// a configuration's apps list serves, sorted.
func configApps(config string) []string {
	var c struct {
		Apps []struct {
			Manifest string `yaml:"manifest"`
		} `yaml:"apps"`
	}
	if err := yaml.Unmarshal([]byte(config), &c); err != nil {
		return []string{"unparsable: " + err.Error()}
	}
	var apps []string
	for _, a := range c.Apps {
		if rest, ok := strings.CutPrefix(a.Manifest, "/usr/share/sneakgate/models/"); ok {
			apps = append(apps, strings.TrimSuffix(rest, "/manifest.yaml"))
		} else {
			apps = append(apps, a.Manifest)
		}
	}
	slices.Sort(apps)
	return apps
}

// TestMakeInstallGPLData: the GPL-derived data is installed only with
// WITH_GPL_DATA=1, and then the configuration serves its app too; switching the
// setting replaces an unedited configuration and removes the data; an edited
// configuration that still serves a GPL-derived app stops a default install
// before it installs anything.
func TestMakeInstallGPLData(t *testing.T) {
	in := newInstaller(t)
	out := in.install("WITH_GPL_DATA=1")
	checkInstalled(t, in, true)
	if !strings.Contains(out, "WITH_GPL_DATA=1: installed the GPL-derived data") {
		t.Errorf("make install WITH_GPL_DATA=1 does not say it installed GPL-derived data:\n%s", out)
	}
	gplConfig := in.read(config)

	// The default over it: the unedited configuration follows, the data goes.
	out = in.install()
	checkInstalled(t, in, false)
	if in.exists(config + ".dist") {
		t.Errorf("switching WITH_GPL_DATA off kept the unedited %s", config)
	}
	if !strings.Contains(out, "make install WITH_GPL_DATA=1 installs it") {
		t.Errorf("make install does not say what it left out and how to install it:\n%s", out)
	}
	if c := in.read(config); !strings.Contains(c, "# - manifest: /usr/share/sneakgate/models/satellite/manifest.yaml") {
		t.Errorf("the default %s does not keep the left-out app as a comment:\n%s", config, c)
	}

	// And back.
	in.install("WITH_GPL_DATA=1")
	checkInstalled(t, in, true)

	// The operator edits the configuration, still serving satellite: a default
	// install stops, says why, and leaves everything as it was.
	edited := gplConfig + "# edited by the operator\n"
	writeFile(t, in.path(config), edited, 0o644)
	out, err := in.make()
	if err == nil {
		t.Fatalf("make install succeeded although the kept %s serves satellite, which it leaves out:\n%s", config, out)
	}
	if !strings.Contains(out, "serves the satellite app") || !strings.Contains(out, "WITH_GPL_DATA=1") {
		t.Errorf("make install's refusal does not name the app and the opt-in:\n%s", out)
	}
	checkInstalled(t, in, true)
	if in.read(config) != edited || in.exists(config+".dist") {
		t.Errorf("the refused install touched the configuration")
	}

	// Without satellite, the edited configuration is kept and the data removed.
	var kept []string
	for _, line := range strings.Split(edited, "\n") {
		if !strings.Contains(line, "/models/satellite/") {
			kept = append(kept, line)
		}
	}
	writeFile(t, in.path(config), strings.Join(kept, "\n"), 0o644)
	in.install()
	for _, app := range gplApps {
		if in.exists("/usr/share/sneakgate/models/" + app) {
			t.Errorf("a default install over a WITH_GPL_DATA=1 one left models/%s", app)
		}
	}
	for _, f := range gplFiles {
		if in.exists("/usr/share/sneakgate/models/" + f) {
			t.Errorf("a default install over a WITH_GPL_DATA=1 one left models/%s", f)
		}
	}
	if !in.exists(config + ".dist") {
		t.Errorf("the edited %s was not kept beside a .dist", config)
	}

	if out, err := in.make("WITH_GPL_DATA=perhaps"); err == nil || !strings.Contains(out, "WITH_GPL_DATA must be 1") {
		t.Errorf("make install WITH_GPL_DATA=perhaps: %v\n%s", err, out)
	}
}

// TestInstalledGatewayServes installs the real binary and library (a default
// install: no GPL-derived data) and runs `sneakgate serve` on the installed
// configuration, changed only to run in the test (its paths rebased into DESTDIR,
// an embedded broker and the metrics on free loopback ports, the journal and
// profiles in a temporary directory, short profiling): it must become ready and
// answer a request of every app it serves, so the installed apps work without the
// data left out. Skipped with -short and without the ONNX Runtime library.
func TestInstalledGatewayServes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds and runs the gateway")
	}
	lib := testenv.ORTLib(t)
	in := newInstaller(t)
	in.ortLib = lib
	in.bin = filepath.Join(t.TempDir(), "sneakgate")
	build := exec.Command("go", "build", "-o", in.bin, "./cmd/sneakgate")
	build.Dir = in.root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sneakgate: %v\n%s", err, out)
	}
	in.install()

	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(in.read(config)), &cfg); err != nil {
		t.Fatal(err)
	}
	section := func(name string) map[string]any {
		m, ok := cfg[name].(map[string]any)
		if !ok {
			t.Fatalf("the installed %s has no %s section", config, name)
		}
		return m
	}
	state := t.TempDir()
	brokerAddr, metricsAddr := freeAddr(t), freeAddr(t)
	mq := section("mqtt")
	mq["broker"] = "tcp://" + brokerAddr
	mq["embedded"] = map[string]any{"enabled": true, "listen": brokerAddr}
	section("store")["path"] = filepath.Join(state, "sneakgate.db")
	eng := section("engine")
	eng["library"] = in.path(eng["library"].(string))
	eng["profile_cache"] = filepath.Join(state, "profiles")
	eng["warmup_runs"], eng["profile_runs"] = 1, 2
	section("metrics")["listen"] = metricsAddr
	var apps []*manifest.App
	for _, a := range cfg["apps"].([]any) {
		entry := a.(map[string]any)
		entry["manifest"] = in.path(entry["manifest"].(string))
		m, err := manifest.Load(entry["manifest"].(string))
		if err != nil {
			t.Fatal(err)
		}
		apps = append(apps, m)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(state, "sneakgate.yaml")
	writeFile(t, cfgPath, string(b), 0o600)

	var logs testenv.Buffer
	serve := exec.Command(in.path("/usr/bin/sneakgate"), "serve", "-config", cfgPath)
	serve.Stdout, serve.Stderr = &logs, &logs
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait() }()
	t.Cleanup(func() {
		serve.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for ready := false; !ready; {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the installed gateway exited before it was ready: %v\n%s", err, logs.String())
		case <-ctx.Done():
			t.Fatalf("the installed gateway is not ready after 3 minutes:\n%s", logs.String())
		case <-time.After(200 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + metricsAddr + "/readyz"); err == nil {
			ready = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}

	dev, err := devices.Dial(ctx, devices.ClientOptions{Broker: "tcp://" + brokerAddr, Device: "install-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for _, m := range apps {
		input := make([]float32, m.InputSize)
		if m.InputRange != nil {
			for i := range input {
				input[i] = float32(m.InputRange[0])
			}
		}
		r, err := dev.Do(ctx, m.Name, "install-test-"+m.Name, input, 5*time.Second)
		if err != nil {
			t.Fatalf("app %s: %v\n%s", m.Name, err, logs.String())
		}
		if !r.Status.Answered() {
			t.Errorf("app %s: reply %+v, want an answer\n%s", m.Name, r, logs.String())
		}
	}
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
