"""bertkit: BERT end to end, identical to the reference and faster."""
from .auto import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)
from .config import BertConfig
from .modeling import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from .pipelines import pipeline
from .tokenizer import BertTokenizer

BertTokenizerFast = BertTokenizer  # transformers 5's name of the same class (there, one class too)

__version__ = "0.1.0"
