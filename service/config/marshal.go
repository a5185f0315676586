package config

import (
	"strconv"
	"time"
)

// Marshalling writes a Config the way a person would write the file, so
// that a program that generates one (the Pulumi program renders every
// stack's) builds these same types instead of a copy of them, and what it
// writes is what Parse reads. Fields left at their zero value are omitted
// and take the loader's defaults.

// MarshalYAML writes d in the largest unit that divides it ("3m", not
// "3m0s").
func (d Duration) MarshalYAML() (any, error) {
	t := time.Duration(d)
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}} {
		if t >= u.d && t%u.d == 0 {
			return strconv.FormatInt(int64(t/u.d), 10) + u.name, nil
		}
	}
	return t.String(), nil
}

// MarshalYAML writes a bare upstream name when the entry renames nothing,
// prices nothing and is no pool, the form SPEC.md's example uses.
func (e RouteEntry) MarshalYAML() (any, error) {
	if e.Model == "" && e.Price == nil && e.Pool == nil && e.Balance == "" && e.Weights == nil {
		return e.Upstream, nil
	}
	type plain RouteEntry
	return plain(e), nil
}
