"""`python -m melange.operator`: run the LLMService operator."""
import sys

from melange.operator.main import main

sys.exit(main())
