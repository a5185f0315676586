// Package e2e holds end-to-end tests that need the whole product at once:
// the post-deploy smoke test (package smoketest) run against a gateway
// built by app.New, a real Redis, a real Prometheus loaded with the
// project's config and rules, and the upstream simulator. They live under
// service/ because the fixtures they use are internal to it.
package e2e
