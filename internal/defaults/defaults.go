// Package defaults fills in the options a caller left unset.
package defaults

// Positive sets *v to def unless *v is above zero: for a count, size or
// duration option, zero is unset and a negative value means nothing, so
// both take the default.
func Positive[T ~int | ~int64 | ~float64](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
