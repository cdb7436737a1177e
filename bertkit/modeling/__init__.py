"""BERT encoder and task heads."""
from .bert import BertModel, BertModelOutput, BertPreTrainedModel
from .heads import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    ClassifierOutput,
    PreTrainingOutput,
    QuestionAnsweringOutput,
)

__all__ = [
    "BertModel", "BertModelOutput", "BertPreTrainedModel", "BertForPreTraining", "BertForMaskedLM",
    "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertForMultipleChoice", "ClassifierOutput", "PreTrainingOutput",
    "QuestionAnsweringOutput",
]
