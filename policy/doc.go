// Package policy owns the DefenderPolicy: its types, strict decoding, validation
// with field paths, the request matchers compiled from it, and hot reload.
//
// A policy file is decoded strictly: YAML is converted to JSON (duplicate keys are
// an error) and decoded with unknown fields rejected, so a misspelled key never
// silently disables a rule. Validation then reports every problem at once, each
// with its field path and the file name:
//
//	prod.yaml: spec.budgets[1].windows[2].limit: Invalid value: 0: must be greater than 0
//
// A value of the wrong type does not stop decoding: the document is first
// walked as a generic tree against the policy's types, every mistyped value is
// reported and left out, and the rest is decoded and validated, so one run
// reports every mistake of the file. Validation also refuses what can never
// match or never be enforced: resources the standard API groups do not serve
// (checked against the built-in table in resources.go, or a cluster's
// discovery with CheckResources) and budgets every resource of which
// Exemption exempts. Warnings reports what is valid but probably not meant.
//
// Matching is compiled when the policy loads (regular expressions included), so
// judging a request allocates nothing and compiles nothing. Within one match
// block every non-empty field must match (fields AND together, the entries of a
// field OR together), except the subject fields users, groups and
// serviceAccounts, which together name the subjects: a request matches when its
// subject is any of them. An exclude block that matches skips the rule.
//
// Reload (Watcher) watches the directory that holds the file, so a ConfigMap
// mount's symlink swap is seen; a new version is decoded, validated and compiled
// to the side and published only when it is good. Each Subscriber (the engine,
// the cascade counter, the proxy's priority levels) then prepares it to the side
// and, once all have, every one commits: a subscriber that refuses it fails the
// reload as a bad edit does. A bad edit keeps the running policy and is
// reported.
package policy
