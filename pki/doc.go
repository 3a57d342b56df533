// Package pki makes self-signed certificates: a CA (whose certificate goes
// into the webhook configuration's caBundle), serving pairs it signs for given
// DNS names and IP addresses, and client pairs for a user and groups (the
// identities the tests and the local control plane use).
// Keys are ECDSA P-256: small, and fast to handshake with.
//
// It is for getting started and for tests; production clusters usually let
// cert-manager issue and rotate the pair, which the webhook reloads from disk.
package pki
