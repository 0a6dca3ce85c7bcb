"""`python -m melange.operator.router`: run the size-aware router."""
from melange.operator.router.proxy import main

main()
