package auth_test

import (
	"io/fs"
	"os"
)

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

func statMode(path string) (fs.FileMode, error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return info.Mode().Perm(), nil
}
