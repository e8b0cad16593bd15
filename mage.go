//go:build ignore

// Entry point for running the build targets without installing mage:
//
//	go run mage.go TARGET
package main

import (
	"os"

	"github.com/magefile/mage/mage"
)

func main() { os.Exit(mage.Main()) }
