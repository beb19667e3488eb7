package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// depsRun runs install-deps.sh with stubs on PATH in place of the package and
// service tools: dpkg-query reports the packages in installed as installed and
// the others as missing, systemctl is-active says mosquitto is running, and
// apt-get, systemctl, pkill and sudo record being run (sudo then runs its
// command). It returns the stubs' record, one "tool args" a line.
func depsRun(t *testing.T, installed ...string) []string {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "ran")
	stubs := filepath.Join(dir, "stubs")
	record := "echo \"$(basename \"$0\") $*\" >>" + log + "\n"
	writeFile(t, filepath.Join(stubs, "dpkg-query"), "#!/bin/sh\n"+
		"for p; do :; done\n"+ // the last argument: the package
		"case \" $STUB_INSTALLED \" in *\" $p \"*) printf 'install ok installed' ;; *) exit 1 ;; esac\n", 0o755)
	writeFile(t, filepath.Join(stubs, "systemctl"), "#!/bin/sh\n"+record+"exit 0\n", 0o755)
	writeFile(t, filepath.Join(stubs, "sudo"), "#!/bin/sh\n"+record+"exec \"$@\"\n", 0o755)
	for _, tool := range []string{"apt-get", "apt", "pkill", "killall", "kill"} {
		writeFile(t, filepath.Join(stubs, tool), "#!/bin/sh\n"+record+"exit 0\n", 0o755)
	}
	cmd := exec.Command("bash", "install-deps.sh")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PATH="+stubs+string(os.PathListSeparator)+os.Getenv("PATH"),
		"STUB_INSTALLED="+strings.Join(installed, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install-deps.sh: %v\n%s", err, out)
	}
	b, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// ranLike returns the recorded lines that, less a leading "sudo ", start with prefix.
func ranLike(ran []string, prefix string) []string {
	var got []string
	for _, l := range ran {
		if strings.HasPrefix(strings.TrimPrefix(l, "sudo "), prefix) {
			got = append(got, l)
		}
	}
	return got
}

// TestInstallDepsKeepsARunningBroker: install-deps.sh (which make build, run and
// test run) stops and disables Debian's mosquitto service only when it has just
// installed Mosquitto itself, as docs/deployment.md says; on a box already serving
// with Debian's Mosquitto that lacks only python3-paho-mqtt, it installs that and
// leaves the broker alone. It never kills mosquitto processes by name.
func TestInstallDepsKeepsARunningBroker(t *testing.T) {
	for _, c := range []struct {
		name      string
		installed []string
		apt       string // the apt-get install line's packages; "": none
		disable   bool
	}{
		{"only paho missing", []string{"mosquitto", "mosquitto-clients"}, "python3-paho-mqtt", false},
		{"clients missing", []string{"mosquitto", "python3-paho-mqtt"}, "mosquitto-clients", false},
		{"mosquitto missing", []string{"mosquitto-clients", "python3-paho-mqtt"}, "mosquitto", true},
		{"all missing", nil, "mosquitto mosquitto-clients python3-paho-mqtt", true},
		{"none missing", []string{"mosquitto", "mosquitto-clients", "python3-paho-mqtt"}, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ran := depsRun(t, c.installed...)
			installs := ranLike(ran, "apt-get install")
			switch {
			case c.apt == "" && len(installs) > 0:
				t.Errorf("installed packages although none is missing: %q", installs)
			case c.apt != "" && (len(installs) != 1 || !strings.HasSuffix(installs[0], " "+c.apt)):
				t.Errorf("apt-get install runs %q, want one for %s", installs, c.apt)
			}
			disables := ranLike(ran, "systemctl disable")
			if want := []string{"systemctl disable --now mosquitto"}; c.disable && !slices.Equal(stripSudo(disables), want) {
				t.Errorf("after installing mosquitto: %q, want %q", disables, want)
			} else if !c.disable && len(disables) > 0 {
				t.Errorf("mosquitto was already installed, yet install-deps.sh ran %q: it takes a serving broker down", disables)
			}
			for _, tool := range []string{"pkill", "killall", "kill"} {
				if k := ranLike(ran, tool+" "); len(k) > 0 {
					t.Errorf("install-deps.sh ran %q: it must not kill brokers it did not start", k)
				}
			}
		})
	}
}

func stripSudo(lines []string) []string {
	var out []string
	for _, l := range lines {
		out = append(out, strings.TrimPrefix(l, "sudo "))
	}
	return out
}
