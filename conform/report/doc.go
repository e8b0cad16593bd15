// Package report is the result of a conformance run, shared by the
// protocol checker (conform/protocol) and the kernel suite
// (conform/kernelsuite): a matrix of checks by targets, each cell a
// Result with its level (MUST or SHOULD), status and detail, written as
// a text matrix, JSON, Markdown or JUnit XML, read back from JSON, and
// merged across runs (the kernel suite's one report per lab VM).
//
// A failed MUST is a violation; a failed SHOULD is a warning; a check
// whose feature the target does not offer is not applicable, with the
// reason.
package report
