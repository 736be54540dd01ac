"""lazyllm's errors (defined in :mod:`lazyllm.core.errors`, the ground floor).

Every error lazyllm raises derives from :class:`LazyLLMError` and from the matching
builtin, so ``except KeyError`` still catches a missing column. Messages say what
failed and how to fix it; keys and URL passwords are redacted from them.

=========================  ====================  ==========================================================
class                      builtin base          raised when
=========================  ====================  ==========================================================
``ColumnNotFoundError``    ``KeyError``          an expression, template or operator names a missing column
                                                 (when the operator is called)
``TemplateError``          ``ValueError``        a Jinja2 template does not parse or cannot render a row
``PlanError``              ``ValueError``        a plan cannot be built or run as asked (an unknown option,
                                                 a plan that cannot be partitioned, a training with no rows)
``ParameterError``         ``PlanError``,        a parameter has the wrong type or range (``temperature``,
                           ``TypeError``         ``batch_size``, ``split`` fractions...), before any call
``OptimizerError``         ``RuntimeError``      an optimizer rule broke the schema (a bug; the rule is named)
``ModelNotFoundError``     ``FileNotFoundError`` a model alias, folder or Hub id cannot be found offline
``MissingDependencyError`` ``ImportError``       an optional package is missing (names the extra or script)
``EngineError``            ``RuntimeError``      an engine cannot load or fails as a whole (rows that fail
                                                 singly get an error column instead)
``CacheError``             ``RuntimeError``      the LMDB cache is unreadable (run ``lazyllm cache repair``)
``HubError``               ``RuntimeError``      a Hugging Face Hub call is refused
``PathNotFoundError``      ``FileNotFoundError`` an input file or folder does not exist
``WorkspaceError``         ``OSError``           the workspace is not a usable folder
=========================  ====================  ==========================================================
"""

from lazyllm.core.errors import *  # noqa: F401,F403
from lazyllm.core.errors import __all__  # noqa: F401
