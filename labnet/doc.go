// Package labnet builds the networks tests and benchmarks run over: a
// network namespace linked to the root namespace by a veth pair, the NIC
// of a lab VM, and link profiles (rate and delay, by netem) applied to
// either. Addresses come only from the documentation networks
// 192.0.2.0/24 and 198.51.100.0/24, so nothing leaves the machine.
package labnet
