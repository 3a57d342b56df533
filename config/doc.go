// Package config owns the serve command's options: flags (AddFlags), their
// validation (Validate reports every problem at once and has no side effects)
// and their completion into typed configuration (Complete).
package config
