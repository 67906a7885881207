import sys
from pathlib import Path

# The float64 references live beside the tests; make `import reference` work from any cwd.
sys.path.insert(0, str(Path(__file__).parent))
