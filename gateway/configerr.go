package gateway

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// explainYAML rewrites the YAML decoder's type errors in the configuration's own
// terms: an unknown key names the section it is in (apps[], mqtt.embedded)
// instead of a Go type, and a duration written without a unit (100 for 100ms)
// says how to write one. Other errors are returned as they are.
func explainYAML(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		msgs[i] = explainYAMLMessage(m)
	}
	return errors.New(strings.Join(msgs, "; "))
}

var (
	unknownField = regexp.MustCompile(`field (\S+) not found in type (\S+)$`)
	notDuration  = regexp.MustCompile("cannot unmarshal !!\\w+ `(.*)` into time\\.Duration$")
)

func explainYAMLMessage(m string) string {
	if s := unknownField.FindStringSubmatchIndex(m); s != nil {
		key, typ := m[s[2]:s[3]], m[s[4]:s[5]]
		where := "at the top level"
		if sec, ok := configSections()[typ]; ok && sec != "" {
			where = "under " + sec
		}
		return m[:s[0]] + fmt.Sprintf("unknown key %q %s (README.md, \"Configuration\", lists the keys)", key, where)
	}
	if s := notDuration.FindStringSubmatchIndex(m); s != nil {
		return m[:s[0]] + fmt.Sprintf("%q is not a duration: write it with a unit (100ms, 2s, 1m)", m[s[2]:s[3]])
	}
	return m
}

// configSections maps the Go type of each section of Config (as the YAML
// decoder names it: gateway.AppConfig) to its path in the file (apps[]); a type
// used in several places lists them all.
var configSections = sync.OnceValue(func() map[string]string {
	paths := map[string][]string{}
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			if t.Kind() != reflect.Pointer {
				path += "[]"
			}
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || t.PkgPath() == "" {
			return
		}
		name := t.String()
		if !strings.HasPrefix(t.PkgPath(), "github.com/sneakgate/") {
			return
		}
		if !slices.Contains(paths[name], path) {
			paths[name] = append(paths[name], path)
		}
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "-" || !f.IsExported() {
				continue
			}
			if tag == "" {
				tag = strings.ToLower(f.Name)
			}
			p := tag
			if path != "" {
				p = path + "." + tag
			}
			walk(f.Type, p)
		}
	}
	walk(reflect.TypeFor[Config](), "")
	out := make(map[string]string, len(paths))
	for name, ps := range paths {
		out[name] = strings.Join(ps, " or ")
	}
	return out
})
