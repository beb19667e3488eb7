package scripts

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS",
			"DESTDIR", "PREFIX", "UNITDIR", "INSTALL_BIN", "ORT_LIB", "PATH":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, "PATH="+in.stubs+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (in *installer) install() string {
	in.t.Helper()
	out, err := in.make()
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
	checkInstalled(t, in)
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
	checkInstalled(t, in)

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

func checkInstalled(t *testing.T, in *installer) {
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

	// Every bundled app is installed; no training source or build script is.
	manifests, _ := filepath.Glob(filepath.Join(in.root, "models", "*", "manifest.yaml"))
	if len(manifests) == 0 {
		t.Fatal("no models/*/manifest.yaml in the repository")
	}
	for _, m := range manifests {
		app := filepath.Base(filepath.Dir(m))
		if !in.exists("/usr/share/sneakgate/models/" + app + "/manifest.yaml") {
			t.Errorf("app %s is not installed", app)
		}
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
